"""``matformer_extract``: standalone submodels whose outputs equal the nested model's sliced forward
(float64, |Δ| <= 1e-12), uniform and per-layer (Mix'n'Match), the ``layer_ffns`` model field, the
save/load round trip, and the errors."""

from __future__ import annotations

import pytest
import torch

import formerlab as fl
from formerlab.layers.ffn.matformer import matformer_granularity, nested_ffns

GRANS = [0.125, 0.25, 0.5, 1.0]
BASE = {"kind": "decoder_lm", "vocab_size": 23, "dim": 16, "depth": 3, "num_heads": 2}
INNERS = {
    "mlp": {"kind": "mlp", "activation": "gelu"},
    "glu": {"kind": "glu", "multiple_of": 8, "bias": True},  # hidden 48: widths 6, 12, 24, 48
}


def nested_model(inner: str = "mlp", **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    ffn = {"kind": "matformer", "granularities": GRANS, "inner": INNERS[inner]}
    model = fl.build_model({**BASE, "ffn": ffn, **extra}).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()  # non-zero biases, so a wrongly sliced bias would show
    return model.eval()


def ffn_widths(model: torch.nn.Module) -> list[int]:
    return [block.ffn.fc2.in_features for block in model.transformer.blocks]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max())


IDS = torch.randint(0, 23, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("inner", sorted(INNERS))
@pytest.mark.parametrize("fraction", GRANS)
def test_uniform_extraction_equals_the_sliced_forward(inner: str, fraction: float) -> None:
    model = nested_model(inner)
    sub = fl.transform(model, {"kind": "matformer_extract", "fraction": fraction})
    with torch.no_grad(), matformer_granularity(model, fraction):
        expected = model(IDS)
    assert max_diff(sub(IDS), expected) <= 1e-12
    assert sub.config.ffn.kind == inner and sub.config.layer_ffns is None
    full = nested_ffns(model)[0].hidden
    assert ffn_widths(sub) == [round(fraction * full)] * 3
    assert not nested_ffns(sub)  # a plain model


@pytest.mark.parametrize("inner", sorted(INNERS))
def test_parameter_count_drops_by_the_cut_units(inner: str) -> None:
    model = nested_model(inner)
    sub = fl.transform(model, {"kind": "matformer_extract", "fraction": 0.25})
    hidden, dim = nested_ffns(model)[0].hidden, 16
    per_unit = (3 if inner == "glu" else 2) * dim + (2 if inner == "glu" else 1)  # weights + biases
    cut = 3 * (hidden - hidden // 4) * per_unit
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) - count(sub) == cut


@pytest.mark.parametrize("inner", sorted(INNERS))
def test_fraction_one_reproduces_the_nested_model(inner: str) -> None:
    model = nested_model(inner)
    plain = fl.transform(model, {"kind": "matformer_extract"})  # fraction 1.0 by default
    assert plain.config.ffn.to_dict() == model.config.ffn.inner.to_dict()
    state, ref = plain.state_dict(), model.state_dict()
    assert list(state) == list(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
    with torch.no_grad():
        assert max_diff(plain(IDS), model(IDS)) <= 1e-12


@pytest.mark.parametrize("inner", sorted(INNERS))
def test_mix_n_match_equals_the_per_layer_sliced_forward(inner: str) -> None:
    model = nested_model(inner)
    fractions = [0.25, 1.0, 0.5]
    sub = fl.transform(model, {"kind": "matformer_extract", "fractions": fractions})
    with torch.no_grad(), matformer_granularity(model, fractions):
        expected = model(IDS)
    assert max_diff(sub(IDS), expected) <= 1e-12
    full = nested_ffns(model)[0].hidden
    assert ffn_widths(sub) == [full // 4, full, full // 2]
    assert [c.kind for c in sub.config.layer_ffns] == [inner] * 3
    rebuilt = fl.build_model(sub.config)  # the config alone describes the per-layer widths
    assert ffn_widths(rebuilt) == ffn_widths(sub)


def test_equal_fractions_given_per_layer_collapse_to_ffn() -> None:
    model = nested_model()
    sub = fl.transform(model, {"kind": "matformer_extract", "fractions": [0.5, 0.5, 0.5]})
    assert sub.config.layer_ffns is None and sub.config.ffn.mult == 2.0


def test_save_and_load_round_trip(tmp_path) -> None:
    model = nested_model("glu")
    sub = fl.transform(model, {"kind": "matformer_extract", "fractions": [0.125, 0.5, 1.0]})
    fl.save_pretrained(sub, tmp_path / "sub")
    loaded = fl.from_pretrained(tmp_path / "sub").double()
    assert loaded.config.to_dict() == sub.config.to_dict()
    with torch.no_grad():
        assert max_diff(loaded(IDS), sub(IDS)) <= 1e-6  # weights stored in float32
    assert ffn_widths(loaded) == [6, 24, 48]


def test_the_nested_model_is_left_untouched() -> None:
    model = nested_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sub = fl.transform(model, {"kind": "matformer_extract", "fraction": 0.25})
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sub.training and next(sub.parameters()).dtype == torch.float64
    assert model.config.ffn.kind == "matformer"
    assert all(layer.granularity is None for layer in nested_ffns(model))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            {"fraction": 0.3},
            r"transform\.fraction: 0\.3 is not a trained granularity of layer 0; "
            r"allowed: 0\.125, 0\.25, 0\.5, 1",
        ),
        (
            {"fractions": [0.25, 0.5]},
            r"transform\.fractions: 2 values for a model with 3 matformer layers; allowed: exactly 3",
        ),
        ({"fractions": [0.25, 0.5, 0.75]}, r"transform\.fractions\[2\]: 0\.75 is not a trained"),
        (
            {"fraction": 0.5, "fractions": [0.5] * 3},
            r"transform\.fraction: 0\.5 given with fractions",
        ),
        ({"fraction": 0.0}, r"transform\.fraction: 0\.0; allowed: 0 < fraction <= 1"),
        ({"fractions": [0.5, 1.5, 1.0]}, r"transform\.fractions\[1\]: 1\.5; allowed"),
        ({"fractions": []}, r"transform\.fractions: empty"),
    ],
)
def test_errors_name_the_field_and_what_is_allowed(spec, match) -> None:
    with pytest.raises(fl.ConfigError, match=match):
        fl.transform(nested_model(), {"kind": "matformer_extract", **spec})


def test_a_plain_model_is_refused() -> None:
    with pytest.raises(fl.ConfigError, match=r"needs a decoder_lm or encoder whose every block"):
        fl.transform(fl.build_model(BASE), {"kind": "matformer_extract", "fraction": 1.0})


def test_layer_ffns_must_match_depth_and_encoder_decoder_refuses_it() -> None:
    with pytest.raises(fl.ConfigError, match=r"model\.layer_ffns: 2 configs for depth=3"):
        fl.load_config({"model": {**BASE, "layer_ffns": ["mlp", "glu"]}, "task": "copy"})
    with pytest.raises(fl.ConfigError, match=r"model\.layer_ffns: per-block FFN configs are not"):
        fl.load_config(
            {
                "model": {**BASE, "kind": "encoder_decoder", "layer_ffns": ["mlp"] * 3},
                "task": "copy",
            }
        )


def test_layer_ffns_builds_the_listed_kinds() -> None:
    model = fl.build_model({**BASE, "layer_ffns": ["glu", {"kind": "mlp", "mult": 1}, "mlp"]})
    kinds = [block.ffn.config.kind for block in model.transformer.blocks]
    assert kinds == ["glu", "mlp", "mlp"] and ffn_widths(model) == [43, 16, 64]
