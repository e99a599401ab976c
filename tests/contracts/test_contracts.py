"""Contracts every registered part must meet (DESIGN §7): registering a part gets it tested here.

Each layer kind is exercised inside a tiny model, so the tests also check that it plugs into the
block, the stack and generation without edits to either.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import formerlab as fl
from formerlab.layers.attention.base import capability
from formerlab.registry import get_registry

TINY = dict(vocab_size=37, dim=16, depth=2, num_heads=2, max_seq_len=24)
LAYER_GROUPS = {
    "attention": "attention",
    "norm": "norm",
    "ffn": "ffn",
    "linear": "linear",
    "position": "position",
    "embedding": "embedding",
}


def tiny_model(kind: str = "decoder_lm", **parts) -> torch.nn.Module:
    cfg = {"kind": kind, **TINY, **parts}
    if kind == "encoder":
        cfg["head"] = {"kind": "none"}
    return fl.build_model(cfg).double()


def part_cases(group: str) -> list[str]:
    return fl.list_registered(group)


def model_kind_for(group: str, name: str) -> str:
    if group == "attention" and not capability(
        get_registry("attention").config_class(name)(), "supports_causal"
    ):
        return "encoder"
    return "decoder_lm"


def all_configs() -> list[tuple[str, str]]:
    from formerlab.registry import GROUPS

    return [(g, n) for g in GROUPS for n in fl.list_registered(g)]


@pytest.mark.parametrize(("group", "name"), all_configs())
def test_config_round_trip_and_describe(group: str, name: str) -> None:
    cls = get_registry(group).config_class(name)
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if required:
        with pytest.raises(fl.ConfigError, match=required[0]):
            cls.from_dict({"kind": name})
        return
    d = cls().to_dict()
    assert d["kind"] == name
    assert cls.from_dict(d).to_dict() == d
    info = fl.describe(group, name)
    assert info["kind"] == name and {f["name"] for f in info["fields"]} == set(d) - {"kind"}


@pytest.mark.parametrize(("group", "name"), [(g, n) for g in LAYER_GROUPS for n in part_cases(g)])
def test_part_in_model_shapes_and_gradients(group: str, name: str) -> None:
    kind = model_kind_for(group, name)
    model = tiny_model(kind, **{LAYER_GROUPS[group]: {"kind": name}})
    ids = torch.randint(0, TINY["vocab_size"], (3, 11))
    out = model(ids)
    expected = (3, 11, TINY["vocab_size"]) if kind == "decoder_lm" else (3, 11, TINY["dim"])
    assert out.shape == expected and out.dtype == torch.float64
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("group", "name"), [(g, n) for g in LAYER_GROUPS for n in part_cases(g)])
def test_causal_models_never_see_the_future(group: str, name: str) -> None:
    if model_kind_for(group, name) != "decoder_lm":
        pytest.skip(f"{name} declares no causal support")
    model = tiny_model(**{LAYER_GROUPS[group]: {"kind": name}}).eval()
    ids = torch.randint(0, TINY["vocab_size"], (2, 12))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % TINY["vocab_size"]
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-12)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-6


@pytest.mark.parametrize("name", part_cases("attention"))
def test_kv_cached_decode_equals_full_forward(name: str) -> None:
    cfg = get_registry("attention").config_class(name)()
    if not (capability(cfg, "supports_kv_cache") and capability(cfg, "supports_causal")):
        pytest.skip(f"{name} declares no KV cache")
    model = tiny_model(attention={"kind": name}).eval()
    ids = torch.randint(0, TINY["vocab_size"], (2, 13))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        steps = [model(ids[:, :5], cache=cache)]
        steps += [model(ids[:, t : t + 1], cache=cache) for t in range(5, 13)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", part_cases("attention"))
def test_padded_batch_equals_unpadded_sequences(name: str) -> None:
    cfg = get_registry("attention").config_class(name)()
    if not capability(cfg, "supports_padding_mask"):
        pytest.skip(f"{name} declares no padding-mask support")
    model = tiny_model("encoder", attention={"kind": name}).eval()
    lengths = [9, 5, 2]
    seqs = [torch.randint(0, TINY["vocab_size"], (n,)) for n in lengths]
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, True
    with torch.no_grad():
        padded = model.encode(ids, attention_mask=mask)
        for i, s in enumerate(seqs):
            alone = model.encode(s[None])
            torch.testing.assert_close(padded[i, : len(s)], alone[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", fl.list_registered("model"))
def test_every_model_kind_builds_and_round_trips(name: str) -> None:
    cfg_cls = get_registry("model").config_class(name)
    cfg = cfg_cls.from_dict({"kind": name, **TINY})
    model = fl.build_model(cfg)
    assert model.config.to_dict() == cfg.to_dict()
    assert sum(p.numel() for p in model.parameters()) > 0
