"""``attention.head_dim``: heads wider or narrower than dim / num_heads (wide attention), and the
wide-vs-deep presets that hold the total number of heads fixed."""

from __future__ import annotations

import pytest
import torch

import formerlab as fl


def _model(**overrides):
    cfg = dict(kind="decoder_lm", vocab_size=32, dim=16, depth=1, num_heads=4, max_seq_len=8)
    cfg.update(overrides)
    return fl.build_model(cfg)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_head_dim_sets_the_attention_width(position) -> None:
    model = _model(attention={"kind": "softmax", "head_dim": 8}, position={"kind": position})
    attn = model.transformer.blocks[0].attn
    assert attn.head_dim == 8 and model.config.head_dim == 8
    assert attn.qkv_proj.out_features == 3 * 4 * 8
    assert attn.out_proj.in_features == 4 * 8 and attn.out_proj.out_features == 16
    ids = torch.randint(0, 32, (2, 8))
    assert model(ids).shape == (2, 8, 32)
    # cached decode still equals the full forward with widened heads
    model.eval()
    full = model(ids)
    cache = model.new_cache()
    steps = [model(ids[:, i : i + 1], cache=cache) for i in range(8)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_head_dim_lifts_the_divisibility_rule() -> None:
    with pytest.raises(fl.ConfigError, match=r"model.dim: 16 is not divisible by num_heads=3"):
        _model(num_heads=3)
    model = _model(num_heads=3, attention={"kind": "softmax", "head_dim": 5})
    assert model.transformer.blocks[0].attn.qkv_proj.out_features == 45
    with pytest.raises(fl.ConfigError, match="attention.head_dim: 0"):
        _model(attention={"kind": "softmax", "head_dim": 0})


def test_wide_and_deep_presets_hold_total_heads_fixed() -> None:
    deep, wide = fl.build_model("deep-4x4"), fl.build_model("wide-1x16")
    heads = [sum(b.attn.num_heads for b in m.transformer.blocks) for m in (deep, wide)]
    assert heads == [16, 16]
    assert {b.attn.head_dim for m in (deep, wide) for b in m.transformer.blocks} == {16}
    assert len(deep.transformer.blocks) == 4 and len(wide.transformer.blocks) == 1
    n_deep, n_wide = (sum(p.numel() for p in m.parameters()) for m in (deep, wide))

    # per block: qkv (64 -> 3 x heads x 16) + out (heads x 16 -> 64) with biases, two LayerNorms,
    # the FFN (64 -> 256 -> 64); deep has 4 such blocks with 4 heads, wide one with 16
    def block(heads: int) -> int:
        width = heads * 16
        return (
            64 * 3 * width
            + 3 * width
            + width * 64
            + 64
            + 2 * 2 * 64
            + 64 * 256
            + 256
            + 256 * 64
            + 64
        )

    assert n_deep - n_wide == 4 * block(4) - block(16)
