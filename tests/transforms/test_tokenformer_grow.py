"""``tokenformer_grow``: appending zero-key parameter tokens to every Pattention is exact (bitwise,
float64 and float32), the config describes the grown model (rebuild, save/load), training continues
through the new tokens, random keys break exactness, and bad arguments are refused."""

from __future__ import annotations

import pytest
import torch

import formerlab as fl
from formerlab.transforms.tokenformer_grow import pattention_layers

TINY = dict(kind="decoder_lm", vocab_size=37, dim=16, depth=2, num_heads=2, max_seq_len=24)


def _model(linear=None, **overrides):
    torch.manual_seed(0)
    cfg = {**TINY, "linear": linear or {"kind": "pattention", "tokens": 6}, **overrides}
    return fl.build_model(cfg)


def _ids(n=3, t=11):
    return torch.randint(0, TINY["vocab_size"], (n, t), generator=torch.Generator().manual_seed(1))


def _grow(model, m=5, **extra):
    return fl.transform(model, {"kind": "tokenformer_grow", "add_tokens": m, **extra})


@pytest.mark.parametrize("normalization", ["l2_norm_gelu", "gelu_l2_norm"])
def test_growth_is_bitwise_exact_in_float64(normalization) -> None:
    model = _model({"kind": "pattention", "tokens": 6, "normalization": normalization})
    model = model.double().eval()
    grown = _grow(model, 5).eval()
    with torch.no_grad():
        before, after = model(_ids()), grown(_ids())
    assert torch.equal(before, after) and (before - after).abs().max() == 0
    assert grown is not model and next(grown.parameters()).dtype == torch.float64
    layers = pattention_layers(grown)
    assert len(layers) == 2 * 6  # q, k, v, out, fc1, fc2 per block
    assert all(p.num_tokens == 11 and p.tau == 6**0.5 for p in layers.values())


def test_growth_twice_and_in_float32_stays_exact() -> None:
    model = _model(tie_embeddings=False).eval()  # the untied head is a Pattention too
    grown = _grow(_grow(model, 3), 7)
    assert grown.config.linear.grown_tokens == [3, 7]
    assert grown.lm_head.num_tokens == 6 + 10
    with torch.no_grad():
        assert torch.equal(model(_ids()), grown.eval()(_ids()))


def test_input_untouched_and_new_keys_zero_values_random() -> None:
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grown = _grow(model, 4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    for name, layer in pattention_layers(grown).items():
        old = pattention_layers(model)[name]
        assert torch.equal(layer.key_tokens[:6], old.key_tokens)
        assert torch.equal(layer.value_tokens[:6], old.value_tokens)
        assert not layer.key_tokens[6:].any()
        assert layer.value_tokens[6:].abs().sum() > 0  # else the new tokens could never train
    again = _grow(model, 4)
    assert all(
        torch.equal(a, b) for a, b in zip(grown.parameters(), again.parameters(), strict=True)
    )


def test_config_describes_the_grown_model_rebuild_and_save_load(tmp_path) -> None:
    model = _model(
        attention={"kind": "softmax", "linear": {"kind": "pattention", "tokens": 4}},
        ffn={"kind": "mlp", "linear": {"kind": "dense"}},
    ).double()
    grown = _grow(model, 2).eval()
    cfg = grown.config
    assert cfg.attention.linear.grown_tokens == [2] and cfg.linear.grown_tokens == [2]
    assert len(pattention_layers(grown)) == 2 * 4  # the FFN stays dense
    rebuilt = fl.build_model(cfg).double()
    rebuilt.load_state_dict(grown.state_dict())
    fl.save_pretrained(grown, tmp_path / "grown")
    loaded = fl.from_pretrained(tmp_path / "grown").double().eval()
    with torch.no_grad():
        ref = grown(_ids())
        assert torch.equal(rebuilt.eval()(_ids()), ref)
        torch.testing.assert_close(loaded(_ids()), ref, rtol=0, atol=1e-6)  # stored as float32
    assert loaded.config.to_dict() == cfg.to_dict()


def test_training_continues_and_reaches_the_new_tokens() -> None:
    grown = _grow(_model(), 5).train()
    ids = _ids(4, 12)
    optimizer = torch.optim.AdamW(grown.parameters(), lr=3e-3)

    def loss_fn():
        logits = grown(ids[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

    first = loss_fn()
    first.backward()
    layers = pattention_layers(grown).values()
    # zero keys: the new tokens' weights are GeLU(0) = 0, so their values get no gradient yet, but
    # their keys do (through the random values) ...
    assert all(layer.key_tokens.grad[6:].abs().sum() > 0 for layer in layers)
    assert all(not layer.value_tokens.grad[6:].any() for layer in layers)
    optimizer.step()
    optimizer.zero_grad()
    loss_fn().backward()  # ... and once the keys have moved, the values train too
    assert all(layer.value_tokens.grad[6:].abs().sum() > 0 for layer in layers)
    optimizer.step()
    optimizer.zero_grad()
    for _ in range(8):
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss_fn().item() < first.item() - 0.05


def test_random_new_keys_change_the_function() -> None:
    model = _model().double().eval()
    grown = _grow(model, 5, key_std=0.02).eval()
    with torch.no_grad():
        assert (model(_ids()) - grown(_ids())).abs().max() > 1e-6


def test_value_std_zero_gives_zero_values() -> None:
    grown = _grow(_model(), 3, value_std=0.0)
    layer = next(iter(pattention_layers(grown).values()))
    assert not layer.value_tokens[6:].any()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"add_tokens": 0}, "transform.add_tokens"),
        ({"add_tokens": -2}, "transform.add_tokens"),
        ({"add_tokens": 2, "key_std": -1.0}, "transform.key_std"),
        ({"add_tokens": 2, "value_std": -0.1}, "transform.value_std"),
        ({}, "transform.add_tokens"),
    ],
)
def test_bad_arguments_are_refused(spec, match) -> None:
    with pytest.raises(fl.ConfigError, match=match):
        fl.transform(_model(), {"kind": "tokenformer_grow", **spec})


def test_model_without_pattention_is_refused() -> None:
    dense = _model({"kind": "dense"})
    with pytest.raises(fl.ConfigError, match="needs a model with Pattention layers"):
        _grow(dense, 4)
