"""The ``linear`` group reaches every projection: model-wide ``linear``, per-part overrides
(``attention.linear``, ``ffn.linear``), unfused q/k/v for kinds that must not fuse, and the
``init_normal_`` initialisation hook."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import formerlab as fl
from formerlab.layers.linear import ConcatLinear, DenseLinear, LinearConfig
from formerlab.registry import LINEAR


@dataclass(kw_only=True)
class _ProbeConfig(LinearConfig):
    kind = "probe_linear"


class _Probe(nn.Module):
    """A non-fusable linear kind that records its init std."""

    def __init__(self, cfg, *, in_features, out_features, bias):
        super().__init__()
        self.inner = nn.Linear(in_features, out_features, bias=bias)
        self.init_std = None

    def init_normal_(self, std: float) -> None:
        self.init_std = std
        nn.init.zeros_(self.inner.weight)

    def forward(self, x):
        return self.inner(x)


@pytest.fixture
def probe_kind():
    LINEAR.register(_ProbeConfig)(_Probe)
    yield "probe_linear"
    LINEAR.unregister("probe_linear")


def _model(**overrides):
    cfg = dict(kind="decoder_lm", vocab_size=32, dim=16, depth=2, num_heads=2, max_seq_len=8)
    cfg.update(overrides)
    return fl.build_model(cfg)


def _kinds(model):
    return {
        n: type(m).__name__ for n, m in model.named_modules() if n.endswith(("_proj", "fc1", "fc2"))
    }


def test_attention_override_leaves_ffn_dense(probe_kind) -> None:
    model = _model(attention={"kind": "softmax", "linear": {"kind": probe_kind}})
    block = model.transformer.blocks[0]
    assert isinstance(block.attn.qkv_proj, ConcatLinear)
    assert all(isinstance(p, _Probe) for p in block.attn.qkv_proj.parts)
    assert isinstance(block.attn.out_proj, _Probe)
    assert isinstance(block.ffn.fc1, DenseLinear) and isinstance(block.ffn.fc2, DenseLinear)


def test_ffn_override_leaves_attention_dense(probe_kind) -> None:
    model = _model(ffn={"kind": "mlp", "linear": {"kind": probe_kind}})
    block = model.transformer.blocks[1]
    assert isinstance(block.ffn.fc1, _Probe) and isinstance(block.ffn.fc2, _Probe)
    assert isinstance(block.attn.qkv_proj, DenseLinear)


def test_model_wide_kind_reaches_every_projection_and_initialises_itself(probe_kind) -> None:
    model = _model(linear={"kind": probe_kind}, tie_embeddings=False)
    probes = [m for m in model.modules() if isinstance(m, _Probe)]
    # per block: q, k, v, out, fc1, fc2; plus the untied LM head
    assert len(probes) == 2 * 6 + 1
    assert isinstance(model.lm_head, _Probe)
    out_std = 0.02 / (2 * 2) ** 0.5  # residual-out projections get GPT-2's scaled std
    blk = model.transformer.blocks[0]
    assert blk.attn.out_proj.init_std == pytest.approx(out_std)
    assert blk.ffn.fc2.init_std == pytest.approx(out_std)
    assert blk.ffn.fc1.init_std == pytest.approx(0.02)
    # init_normal_ owns its submodules: init_weights did not overwrite the zeros it wrote
    assert all(not p.inner.weight.detach().any() for p in probes)


def test_unfused_qkv_equals_fused_with_the_same_weights(monkeypatch) -> None:
    torch.manual_seed(0)
    fused = _model().double()
    monkeypatch.setattr(DenseLinear, "fusable", False)
    split = _model().double()
    for fb, sb in zip(fused.transformer.blocks, split.transformer.blocks, strict=True):
        w, b = fb.attn.qkv_proj.weight, fb.attn.qkv_proj.bias
        with torch.no_grad():
            for part, ws, bs in zip(sb.attn.qkv_proj.parts, w.split(16), b.split(16), strict=True):
                part.weight.copy_(ws)
                part.bias.copy_(bs)
    state = {k: v for k, v in fused.state_dict().items() if "qkv_proj" not in k}
    split.load_state_dict(state, strict=False)
    ids = torch.randint(0, 32, (2, 8))
    torch.testing.assert_close(split(ids), fused(ids), rtol=0, atol=1e-12)


def test_override_round_trips_and_rejects_unknown_kinds() -> None:
    cfg = {"kind": "softmax", "linear": {"kind": "dense"}}
    model = _model(attention=cfg)
    assert model.config.attention.to_dict()["linear"] == {"kind": "dense"}
    with pytest.raises(fl.ConfigError, match="attention.linear.kind"):
        _model(attention={"kind": "softmax", "linear": {"kind": "nope"}})
