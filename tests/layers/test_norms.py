"""Norm kinds: crmsnorm (and the compressed stream it implies), none, and the scale/bias options."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import formerlab as fl
from formerlab.layers.block import stream_ports
from formerlab.layers.ffn import FFNConfig
from formerlab.layers.norm import (
    CRMSNorm,
    CRMSNormConfig,
    LayerNorm,
    LayerNormConfig,
    NoNorm,
    NoNormConfig,
    RMSNorm,
    RMSNormConfig,
)
from formerlab.layers.norm.crmsnorm import compress, expand
from formerlab.registry import FFN

TINY = dict(vocab_size=29, dim=12, depth=2, num_heads=3, max_seq_len=16)


def f64(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def test_crmsnorm_is_the_papers_formula_in_float64() -> None:
    d = 9
    norm = CRMSNorm(CRMSNormConfig(eps=1e-3), dim=d).double()
    with torch.no_grad():
        norm.weight.copy_(f64(d - 1))
    x = f64(4, 5, d - 1) * 3
    total = x.sum(-1, keepdim=True)
    expected = x / torch.sqrt(((x * x).sum(-1, keepdim=True) + total * total) / d + 1e-3)
    torch.testing.assert_close(norm(x), expected * norm.weight, rtol=1e-13, atol=1e-13)
    assert norm.weight.shape == (d - 1,)


def test_crmsnorm_of_the_compressed_vector_is_layernorm_of_the_full_one() -> None:
    d = 7
    z = f64(3, 6, d) * 2 + 5  # any vector, mean far from zero
    crms = CRMSNorm(CRMSNormConfig(scale=False), dim=d).double()
    rms = RMSNorm(RMSNormConfig(scale=False), dim=d).double()
    ln = nn.functional.layer_norm(z, (d,), eps=1e-5)
    torch.testing.assert_close(expand(crms(compress(z))), ln, rtol=1e-12, atol=1e-12)
    zero_mean = z - z.mean(-1, keepdim=True)
    torch.testing.assert_close(crms(compress(z)), compress(rms(zero_mean)), rtol=1e-12, atol=1e-12)


def test_compress_and_expand_are_inverse_on_zero_mean_vectors() -> None:
    z = f64(5, 8)
    c = compress(z)
    assert c.shape == (5, 7) and c.is_contiguous()
    torch.testing.assert_close(expand(c), z - z.mean(-1, keepdim=True), rtol=0, atol=1e-14)
    torch.testing.assert_close(compress(expand(c)), c, rtol=0, atol=1e-14)
    assert expand(c).sum(-1).abs().max() < 1e-13


def test_rmsnorm_scale_and_bias_options() -> None:
    x = f64(2, 3, 6)
    bare = RMSNorm(RMSNormConfig(scale=False), dim=6).double()
    assert not list(bare.parameters())
    torch.testing.assert_close(
        bare(x), x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-5), rtol=1e-13, atol=1e-13
    )
    full = RMSNorm(RMSNormConfig(bias=True), dim=6).double()
    with torch.no_grad():
        full.weight.copy_(f64(6))
        full.bias.copy_(f64(6))
    torch.testing.assert_close(full(x), bare(x) * full.weight + full.bias, rtol=1e-13, atol=1e-13)


def test_rmsnorm_with_bias_equals_layernorm_on_zero_mean_input() -> None:
    x = f64(4, 10)
    x = x - x.mean(-1, keepdim=True)
    ln = LayerNorm(LayerNormConfig(), dim=10).double()
    rms = RMSNorm(RMSNormConfig(bias=True), dim=10).double()
    with torch.no_grad():
        for p in (ln.weight, ln.bias):
            p.copy_(f64(10))
        rms.weight.copy_(ln.weight)
        rms.bias.copy_(ln.bias)
    torch.testing.assert_close(rms(x), ln(x), rtol=1e-12, atol=1e-12)


def test_layernorm_without_scale_has_no_gain() -> None:
    norm = LayerNorm(LayerNormConfig(scale=False, bias=False), dim=5)
    assert norm.weight is None and norm.bias is None and not list(norm.parameters())
    x = torch.randn(3, 5)
    torch.testing.assert_close(norm(x), nn.functional.layer_norm(x, (5,)))


def test_none_norm_is_the_identity_without_parameters() -> None:
    norm = NoNorm(NoNormConfig(), dim=4)
    x = torch.randn(2, 4)
    assert norm(x) is x and not list(norm.parameters())


def test_norm_configs_reject_bad_values_naming_the_field() -> None:
    with pytest.raises(fl.ConfigError, match=r"model\.norm\.eps: 0\.0 must be > 0"):
        fl.build_model({"kind": "decoder_lm", **TINY, "norm": {"kind": "crmsnorm", "eps": 0.0}})
    with pytest.raises(fl.ConfigError, match=r"model\.dim: 1; .*needs dim >= 2"):
        fl.build_model({"kind": "decoder_lm", **TINY, "dim": 1, "num_heads": 1, "norm": "crmsnorm"})
    with pytest.raises(fl.ConfigError, match=r"model\.final_norm\.kind: 'crmsnorm' reads a compr"):
        fl.build_model({"kind": "decoder_lm", **TINY, "final_norm": {"kind": "crmsnorm"}})
    with pytest.raises(fl.ConfigError, match=r"model\.norm\.scale: invalid value 'yes'"):
        fl.build_model({"kind": "decoder_lm", **TINY, "norm": {"kind": "rmsnorm", "scale": "yes"}})


def test_compressed_model_stores_dim_minus_one_coordinates() -> None:
    model = fl.build_model({"kind": "decoder_lm", **TINY, "norm": "crmsnorm"})
    d, sd = TINY["dim"], model.state_dict()
    assert sd["transformer.embed.compressed.weight"].shape == (TINY["vocab_size"], d - 1)
    assert sd["transformer.position.embedding.weight"].shape == (TINY["max_seq_len"], d - 1)
    assert sd["transformer.blocks.0.attn.qkv_proj.weight"].shape == (3 * d, d - 1)
    assert sd["transformer.blocks.0.attn.out_proj.weight"].shape == (d - 1, d)
    assert sd["transformer.blocks.1.ffn.fc2.bias"].shape == (d - 1,)
    full = model.transformer.embed.weight  # what the tied head decodes with
    assert full.shape == (TINY["vocab_size"], d) and full.sum(-1).abs().max() < 1e-5
    torch.testing.assert_close(full[:, :-1], sd["transformer.embed.compressed.weight"])


def test_tied_compressed_decoder_decodes_with_the_expanded_embedding() -> None:
    model = fl.build_model({"kind": "decoder_lm", **TINY, "norm": "crmsnorm"}).double().eval()
    ids = torch.randint(0, TINY["vocab_size"], (2, 7))
    with torch.no_grad():
        h = model.transformer(ids)
        logits = model(ids)
    assert h.shape == (2, 7, TINY["dim"])
    torch.testing.assert_close(logits, h @ expand(model.transformer.embed.compressed.weight).T)


def test_compressed_stream_with_a_crmsnorm_final_norm_expands_after_it() -> None:
    model = fl.build_model({"kind": "encoder", **TINY, "norm": "crmsnorm", "head": "none"}).double()
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    seen = []
    model.transformer.final_norm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    h = model.encode(ids)
    assert seen[0].shape == (2, 5, TINY["dim"] - 1)
    torch.testing.assert_close(h, expand(seen[0]), rtol=0, atol=0)


def test_compressed_stream_refuses_sublayers_without_stream_ports() -> None:
    @dataclass(kw_only=True)
    class PortlessConfig(FFNConfig):
        kind = "portless_test"

    @FFN.register(PortlessConfig)
    class Portless(nn.Module):
        def __init__(self, cfg, *, dim, linear):
            super().__init__()
            self.config, self.proj = cfg, nn.Linear(dim, dim)

        def forward(self, x):
            return self.proj(x)

    try:
        cfg = {"kind": "decoder_lm", **TINY, "ffn": {"kind": "portless_test"}}
        assert stream_ports(fl.build_model(cfg).transformer.blocks[0].ffn) is None
        with pytest.raises(fl.ConfigError, match=r"model\.ffn\.kind: 'portless_test' does not dec"):
            fl.build_model({**cfg, "norm": "crmsnorm"})
    finally:
        FFN.unregister("portless_test")


def test_known_stream_ports() -> None:
    model = fl.build_model({"kind": "decoder_lm", **TINY})
    block = model.transformer.blocks[0]
    assert stream_ports(block.attn) == (("qkv_proj",), ("out_proj",))
    assert stream_ports(block.ffn) == (("fc1",), ("fc2",))
    seq2seq = fl.build_model({"kind": "encoder_decoder", **TINY}).decoder.blocks[0]
    assert stream_ports(seq2seq.cross_attn) == (("q_proj",), ("out_proj",))
