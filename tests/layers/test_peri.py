"""Norm placement pre / post / peri (Peri-LN, Kim et al. 2025) and the ``final_norm`` option."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import formerlab as fl
from formerlab.layers.block import TransformerBlock

TINY = dict(vocab_size=31, dim=16, depth=3, num_heads=2, max_seq_len=20)


def randomised(model: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Non-trivial weights everywhere (norm gains around 1), so every path carries signal."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + scale * torch.randn_like(p))
    return model


def decoder(placement: str, **extra) -> torch.nn.Module:
    cfg = {"kind": "decoder_lm", **TINY, "norm_placement": placement, **extra}
    return randomised(fl.build_model(cfg).double().eval())


def ln(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"], 1e-5)


def lin(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    return x @ sd[f"{key}.weight"].T + sd[f"{key}.bias"]


def attention(x: torch.Tensor, sd: dict, key: str, heads: int) -> torch.Tensor:
    B, T, D = x.shape
    q, k, v = lin(x, sd, f"{key}.qkv_proj").split(D, -1)
    q, k, v = (t.view(B, T, heads, D // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // heads)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    return lin(y, sd, f"{key}.out_proj")


def reference(model: torch.nn.Module, ids: torch.Tensor, placement: str) -> torch.Tensor:
    """The decoder written out by hand for each placement (LayerNorm, softmax, GELU MLP)."""
    sd = model.state_dict()
    x = sd["transformer.embed.weight"][ids]
    x = x + sd["transformer.position.embedding.weight"][: ids.shape[1]]
    for i in range(TINY["depth"]):
        b = f"transformer.blocks.{i}"
        branches = [
            ("attn", lambda h, b=b: attention(h, sd, f"{b}.attn", TINY["num_heads"])),
            ("ffn", lambda h, b=b: lin(F.gelu(lin(h, sd, f"{b}.ffn.fc1")), sd, f"{b}.ffn.fc2")),
        ]
        for name, f in branches:
            if placement == "pre":
                x = x + f(ln(x, sd, f"{b}.{name}_norm"))
            elif placement == "post":
                x = ln(x + f(x), sd, f"{b}.{name}_norm")
            else:
                x = x + ln(f(ln(x, sd, f"{b}.{name}_norm")), sd, f"{b}.{name}_out_norm")
    if placement != "post":
        x = ln(x, sd, "transformer.final_norm")
    return x @ sd["transformer.embed.weight"].T


@pytest.mark.parametrize("placement", ["pre", "post", "peri"])
def test_each_placement_equals_a_hand_written_decoder(placement: str) -> None:
    model = decoder(placement)
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(model, ids, placement), rtol=0, atol=1e-10)


def increments(model: torch.nn.Module, ids: torch.Tensor) -> tuple[list, list]:
    """The residual increments (out-norm outputs) and each block's (input, output)."""
    incs, blocks = [], []
    for block in (m for m in model.modules() if isinstance(m, TransformerBlock)):
        for norm in (block.attn_out_norm, block.cross_out_norm, block.ffn_out_norm):
            if norm is not None:
                norm.register_forward_hook(lambda _m, _i, out: incs.append(out))
        block.register_forward_hook(lambda _m, inp, out: blocks.append((inp[0], out)))
    with torch.no_grad():
        model(ids) if model.config.kind == "decoder_lm" else model(ids, ids)
    return incs, blocks


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_peri_increments_have_rms_one_with_a_fresh_out_norm(norm: str) -> None:
    model = decoder("peri", norm={"kind": norm, "eps": 1e-12})
    with torch.no_grad():  # gamma_out = 1 (beta_out = 0): a freshly initialised out-norm
        for block in model.transformer.blocks:
            for out_norm in (block.attn_out_norm, block.ffn_out_norm):
                out_norm.weight.fill_(1.0)
                if getattr(out_norm, "bias", None) is not None:
                    out_norm.bias.zero_()
    incs, blocks = increments(model, torch.randint(0, TINY["vocab_size"], (3, 11)))
    assert len(incs) == 2 * TINY["depth"]
    rms = torch.stack([x.square().mean(-1).sqrt() for x in incs])
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-5)
    for j, (x_in, x_out) in enumerate(blocks):  # each block adds exactly its two increments
        torch.testing.assert_close(x_out, x_in + incs[2 * j] + incs[2 * j + 1], rtol=0, atol=1e-12)


def test_peri_cross_attention_increment_is_normalised_too() -> None:
    cfg = {**TINY, "kind": "encoder_decoder", "norm_placement": "peri"}
    model = randomised(fl.build_model({**cfg, "norm": {"kind": "rmsnorm", "eps": 1e-12}}))
    for block in (m for m in model.modules() if isinstance(m, TransformerBlock)):
        for out_norm in (block.attn_out_norm, block.cross_out_norm, block.ffn_out_norm):
            if out_norm is not None:
                out_norm.weight.data.fill_(1.0)
    incs, _ = increments(model.double().eval(), torch.randint(0, TINY["vocab_size"], (2, 6)))
    assert len(incs) == 2 * TINY["depth"] + 3 * TINY["depth"]
    rms = torch.cat([x.square().mean(-1).sqrt().flatten() for x in incs])
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-5)


def test_peri_adds_an_out_norm_per_sublayer_and_pre_post_keep_their_parameters() -> None:
    names = {p: set(dict(decoder(p).named_parameters())) for p in ("pre", "post", "peri")}
    assert not any("out_norm" in n for n in names["pre"] | names["post"])
    extra = names["peri"] - names["pre"]
    assert extra == {
        f"transformer.blocks.{i}.{s}_out_norm.{w}"
        for i in range(TINY["depth"])
        for s in ("attn", "ffn")
        for w in ("weight", "bias")
    }
    assert names["pre"] - names["post"] == {
        "transformer.final_norm.weight",
        "transformer.final_norm.bias",
    }


@pytest.mark.parametrize(
    ("placement", "final_norm", "has_final"),
    [
        ("pre", "auto", True),
        ("peri", "auto", True),
        ("post", "auto", False),
        ("post", True, True),
        ("pre", False, False),
    ],
)
def test_final_norm_auto_true_false(placement: str, final_norm, has_final: bool) -> None:
    model = decoder(placement, final_norm=final_norm)
    assert isinstance(model.transformer.final_norm, fl.layers.norm.LayerNorm) is has_final
    ids = torch.randint(0, TINY["vocab_size"], (1, 5))
    with torch.no_grad():
        h = model.transformer(ids)
    if not has_final:  # the stack output is the last block's output
        seen = []
        model.transformer.blocks[-1].register_forward_hook(lambda _m, _i, out: seen.append(out))
        with torch.no_grad():
            model.transformer(ids)
        torch.testing.assert_close(h, seen[0], rtol=0, atol=0)


def test_final_norm_can_be_a_norm_config_of_its_own() -> None:
    model = decoder("pre", final_norm={"kind": "rmsnorm", "bias": True})
    final = model.transformer.final_norm
    assert isinstance(final, fl.layers.norm.RMSNorm) and final.bias is not None
    assert isinstance(model.transformer.blocks[0].attn_norm, fl.layers.norm.LayerNorm)
    cfg = model.config
    assert type(cfg).from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    assert cfg.to_dict()["final_norm"] == {
        "kind": "rmsnorm",
        "eps": 1e-5,
        "scale": True,
        "bias": True,
    }


def test_placement_and_final_norm_errors_name_the_field() -> None:
    with pytest.raises(fl.ConfigError, match=r"model\.norm_placement: invalid value 'mid'.*'peri'"):
        fl.build_model({"kind": "decoder_lm", **TINY, "norm_placement": "mid"})
    with pytest.raises(fl.ConfigError, match=r"model\.final_norm: invalid value 'sometimes'"):
        fl.build_model({"kind": "decoder_lm", **TINY, "final_norm": "sometimes"})
