"""Exact Pre-LN → Pre-RMSNorm / Pre-CRMSNorm conversions (Jiang et al. 2023, arXiv:2305.14858)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import formerlab as fl
from formerlab.layers.attention.base import capability
from formerlab.layers.linear import DenseConfig, DenseLinear
from formerlab.registry import LINEAR, get_registry
from formerlab.transforms import convert_pre_ln

TINY = dict(vocab_size=37, dim=16, depth=2, num_heads=2, max_seq_len=24)
KINDS = ("pre_ln_to_rmsnorm", "pre_ln_to_crmsnorm")
TOL = 1e-9


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial LayerNorm gains and biases (and perturbed weights), in float64."""
    model = model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
            else:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def pre_ln(kind: str = "decoder_lm", **extra) -> torch.nn.Module:
    cfg = {"kind": kind, **TINY, **extra}
    if kind == "encoder" and "head" not in cfg:
        cfg["head"] = {"kind": "classifier", "num_classes": 3, "pooling": "mean"}
    return randomised(fl.build_model(cfg))


def outputs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, ids) if model.config.kind == "encoder_decoder" else model(ids)


def gap(a: torch.nn.Module, b: torch.nn.Module, ids: torch.Tensor | None = None) -> float:
    ids = torch.randint(0, TINY["vocab_size"], (3, 11)) if ids is None else ids
    return float((outputs(a, ids) - outputs(b, ids)).abs().max())


CASES = [
    ("decoder_lm", {"tie_embeddings": True}),
    ("decoder_lm", {"tie_embeddings": False}),
    ("decoder_lm", {"position": "sinusoidal"}),
    ("decoder_lm", {"position": "rope", "tie_embeddings": False}),
    ("decoder_lm", {"position": "none"}),
    ("decoder_lm", {"embedding": {"kind": "token", "scale_by_sqrt_dim": True}}),
    ("encoder", {}),
    ("encoder", {"head": {"kind": "mlm", "tie_embeddings": True}}),
    ("encoder", {"head": {"kind": "mlm", "tie_embeddings": False}, "position": "rope"}),
    ("encoder", {"head": {"kind": "token_classifier"}, "position": "sinusoidal"}),
    ("encoder", {"head": {"kind": "none"}}),
    ("encoder_decoder", {"tie_embeddings": True}),
]


@pytest.mark.parametrize(("kind", "extra"), CASES)
def test_conversion_is_exact_in_float64(kind: str, extra: dict) -> None:
    model = pre_ln(kind, **extra)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for transform in KINDS:
        new = fl.transform(model, {"kind": transform}).eval()
        assert gap(model, new) <= TOL
        compressed = transform.endswith("crmsnorm")
        assert new.config.norm.kind == ("crmsnorm" if compressed else "rmsnorm")
        assert new.config.norm.scale is False and new.config.final_norm.kind == "rmsnorm"
        assert new.config.final_norm.bias is True and new.config.norm_placement == "pre"
        assert not getattr(new.config, "tie_embeddings", False)
        blocks = [m for n, m in new.named_modules() if n.endswith(("attn_norm", "ffn_norm"))]
        assert blocks and not any(list(m.parameters()) for m in blocks)  # γ, β folded away
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("kind", ["decoder_lm", "encoder", "encoder_decoder"])
def test_skipping_one_recentring_breaks_the_identity(compressed: bool, kind: str) -> None:
    model = pre_ln(kind)
    stack = "encoder" if kind == "encoder_decoder" else "transformer"
    for port in (f"{stack}.blocks.0.attn.out_proj", f"{stack}.blocks.1.ffn.fc2"):
        bad = convert_pre_ln(model, compressed=compressed, skip_recentre=port)
        assert gap(model, bad) > 1e-3


def attention_kinds() -> list[str]:
    return fl.list_registered("attention")


@pytest.mark.parametrize("name", attention_kinds())
def test_every_attention_kind_with_stream_ports_converts_exactly(name: str) -> None:
    causal = capability(get_registry("attention").config_class(name)(), "supports_causal")
    kind = "decoder_lm" if causal else "encoder"
    model = pre_ln(kind, attention={"kind": name})
    if name == "lipschitz":  # its input passes a ball projection: no linear ports to fold into
        with pytest.raises(fl.ConfigError, match=r"no linear stream input ports"):
            convert_pre_ln(model, compressed=False)
        return
    if name == "gated":  # its gate projection has no bias to absorb a nonzero β
        with pytest.raises(fl.ConfigError, match=r"gate_proj: has no bias to absorb"):
            convert_pre_ln(model, compressed=False)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("norm.bias"):
                    p.zero_()
    for compressed in (False, True):
        assert gap(model, convert_pre_ln(model, compressed=compressed)) <= TOL


def test_missing_biases_are_switched_on_to_absorb_beta() -> None:
    model = pre_ln(attention={"kind": "softmax", "bias": False}, ffn={"kind": "mlp", "bias": False})
    for compressed in (False, True):
        new = convert_pre_ln(model, compressed=compressed)
        assert new.config.attention.bias and new.config.ffn.bias
        assert gap(model, new) <= TOL
    no_beta = pre_ln(attention={"kind": "softmax", "bias": False}, norm={"bias": False})
    assert convert_pre_ln(no_beta, compressed=True).config.attention.bias is False


def test_converted_models_save_and_load(tmp_path) -> None:
    model = pre_ln(position="sinusoidal")
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    for transform in KINDS:
        new = fl.transform(model, {"kind": transform})
        fl.save_pretrained(new, tmp_path / transform)
        loaded = fl.from_pretrained(tmp_path / transform)  # float32, like any fresh build
        assert loaded.config.to_dict() == new.config.to_dict()
        torch.testing.assert_close(outputs(loaded, ids), outputs(new.float(), ids), rtol=0, atol=0)


def test_greedy_generation_is_unchanged() -> None:
    model = pre_ln()
    prompt = [[1, 2, 3, 4], [5, 6, 7, 8]]
    expected = model.generate(prompt, 12, temperature=0.0)
    for transform in KINDS:
        assert fl.transform(model, {"kind": transform}).generate(prompt, 12, temperature=0.0) == (
            expected
        )


def test_float32_models_stay_float32_and_close() -> None:
    model = fl.build_model({"kind": "decoder_lm", **TINY}).eval()
    for transform in KINDS:
        new = fl.transform(model, {"kind": transform}).eval()
        assert next(new.parameters()).dtype == torch.float32 and not new.training
        assert gap(model, new) < 1e-4


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"norm": "rmsnorm"}, r"model\.norm\.kind: 'rmsnorm' cannot be converted.*'layernorm'"),
        ({"norm_placement": "post"}, r"model\.norm_placement: 'post' cannot be converted"),
        ({"norm_placement": "peri"}, r"model\.norm_placement: 'peri' cannot be converted"),
        ({"final_norm": False}, r"model\.final_norm: False cannot be converted"),
        ({"ffn": {"kind": "moe"}}, r"model\.ffn\.kind: 'moe' does not declare its stream ports"),
    ],
)
def test_what_cannot_be_converted_exactly_is_refused(extra: dict, match: str) -> None:
    if extra.get("ffn", {}).get("kind") == "moe" and "moe" not in fl.list_registered("ffn"):
        pytest.skip("moe is not registered")
    model = fl.build_model({"kind": "decoder_lm", **TINY, **extra})
    for transform in KINDS:
        with pytest.raises(fl.ConfigError, match=match):
            fl.transform(model, {"kind": transform})


def test_non_dense_linear_kinds_are_refused() -> None:
    @dataclass(kw_only=True)
    class OtherDenseConfig(DenseConfig):
        kind = "other_dense_test"

    LINEAR.register(OtherDenseConfig)(DenseLinear)
    try:
        model = fl.build_model({"kind": "decoder_lm", **TINY, "linear": "other_dense_test"})
        with pytest.raises(fl.ConfigError, match=r"model\.linear\.kind: 'other_dense_test'"):
            fl.transform(model, {"kind": "pre_ln_to_rmsnorm"})
    finally:
        LINEAR.unregister("other_dense_test")


def test_transform_configs_have_no_fields() -> None:
    with pytest.raises(fl.ConfigError, match=r"transform\.eps: unknown field"):
        fl.transform(pre_ln(), {"kind": "pre_ln_to_rmsnorm", "eps": 1e-6})
