"""``factorize_lowrank`` and ``factorize_dense_sparse``: exactness at full size (float64), the
Eckart–Young error of truncated SVD, the dense-sparse error falling with the non-zeros, the new
model's config and weights round trip, and the refusals."""

from __future__ import annotations

import itertools

import pytest
import torch

import formerlab as fl
from formerlab.layers.linear import DenseSparseLinear, LowRankLinear
from formerlab.transforms.factorize import dense_sparse_factors, svd_factors

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: 1 thread is fastest


BASE = {"kind": "decoder_lm", "vocab_size": 23, "dim": 16, "depth": 2, "num_heads": 2}
IDS = torch.randint(0, 23, (2, 9), generator=torch.Generator().manual_seed(0))


def dense_model(**extra) -> torch.nn.Module:
    torch.manual_seed(0)
    model = fl.build_model({**BASE, **extra}).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()  # non-zero biases, so a lost or misplaced bias would show
    return model.eval()


def dense_weights(model) -> dict[str, torch.Tensor]:
    """Every attention / FFN projection's weight, fused q/k/v split into its three parts."""
    out = {}
    for i, block in enumerate(model.transformer.blocks):
        for n, w in zip("qkv", block.attn.qkv_proj.weight.split(16), strict=True):
            out[f"{i}.{n}"] = w
        out[f"{i}.out"] = block.attn.out_proj.weight
        out[f"{i}.fc1"], out[f"{i}.fc2"] = block.ffn.fc1.weight, block.ffn.fc2.weight
    return {name: w.detach() for name, w in out.items()}


@torch.no_grad()
def factorized_weights(model) -> dict[str, torch.Tensor]:
    out = {}
    for i, block in enumerate(model.transformer.blocks):
        for n, part in zip("qkv", block.attn.qkv_proj.parts, strict=True):
            out[f"{i}.{n}"] = part.effective_weight()
        out[f"{i}.out"] = block.attn.out_proj.effective_weight()
        out[f"{i}.fc1"] = block.ffn.fc1.effective_weight()
        out[f"{i}.fc2"] = block.ffn.fc2.effective_weight()
    return out


def test_full_rank_lowrank_equals_the_dense_model():
    model = dense_model()
    new = fl.transform(model, {"kind": "factorize_lowrank", "rank": 16})
    assert isinstance(new.transformer.blocks[0].ffn.fc2, LowRankLinear)
    torch.testing.assert_close(new(IDS), model(IDS), rtol=0, atol=1e-12)


def test_lowrank_error_is_the_svd_tail():
    model = dense_model()
    rank = 5
    new = fl.transform(model, {"kind": "factorize_lowrank", "rank": rank})
    dense, factored = dense_weights(model), factorized_weights(new)
    assert dense.keys() == factored.keys()
    for name, w in dense.items():
        tail = torch.linalg.svdvals(w)[rank:].pow(2).sum()
        error = (w - factored[name]).pow(2).sum()
        torch.testing.assert_close(error, tail, rtol=1e-9, atol=1e-12)


def test_svd_factors_are_balanced_and_pad_beyond_full_rank():
    w = torch.randn(6, 4, dtype=torch.float64)
    u, v = svd_factors(w, 3)
    torch.testing.assert_close(u.pow(2).sum(0), v.pow(2).sum(1), rtol=1e-10, atol=1e-12)
    u, v = svd_factors(w, 7)
    torch.testing.assert_close(u @ v, w, rtol=0, atol=1e-12)
    assert not u[:, 4:].any() and not v[4:].any()


@pytest.mark.parametrize("support", ["stf", "fixed"])
def test_full_size_dense_sparse_equals_the_dense_model(support):
    model = dense_model()
    spec = {"kind": "factorize_dense_sparse", "basis": 16, "nonzeros": 16, "support": support}
    new = fl.transform(model, spec)
    assert isinstance(new.transformer.blocks[1].attn.out_proj, DenseSparseLinear)
    torch.testing.assert_close(new(IDS), model(IDS), rtol=0, atol=1e-12)


def test_dense_sparse_error_falls_as_nonzeros_grow():
    model = dense_model()
    dense = dense_weights(model)
    errors = []
    for s in range(1, 9):
        spec = {"kind": "factorize_dense_sparse", "basis": 8, "nonzeros": s}
        new = factorized_weights(fl.transform(model, spec))
        errors.append(sum(float((w - new[n]).pow(2).sum()) for n, w in dense.items()))
    assert all(b < a for a, b in itertools.pairwise(errors))
    # at s = k the error is the projection error onto the k-dimensional SVD basis = SVD tail
    tail = sum(float(torch.linalg.svdvals(w)[8:].pow(2).sum()) for w in dense.values())
    assert errors[-1] == pytest.approx(tail, rel=1e-9)


def test_dense_sparse_factors_keep_the_largest_codes_of_an_orthonormal_basis():
    w = torch.randn(10, 7, dtype=torch.float64)
    d, latent, mask = dense_sparse_factors(w, 4, 2)
    gram = d.T @ d
    torch.testing.assert_close(gram, gram[0, 0] * torch.eye(4, dtype=torch.float64))
    assert (mask.sum(0) == 2).all()
    dropped = torch.where(mask, 0.0, latent)
    best_k = d @ latent  # projection onto the basis
    error = (w - d @ torch.where(mask, latent, 0.0)).pow(2).sum()
    expected = (w - best_k).pow(2).sum() + (d @ dropped).pow(2).sum()
    torch.testing.assert_close(error, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "factorize_lowrank", "ratio": 0.4},
        {"kind": "factorize_dense_sparse", "ratio": 0.4, "nonzeros": 2, "support": "fixed"},
    ],
)
def test_config_rebuilds_the_model_and_save_load_round_trips(spec, tmp_path):
    model = dense_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = fl.transform(model, spec)
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k])
    assert new.config.attention.linear.kind == new.config.ffn.linear.kind != "dense"
    assert new.config.linear.kind == "dense"
    rebuilt = fl.build_model(new.config).double()
    rebuilt.load_state_dict(new.state_dict())  # strict: same structure
    fl.save_pretrained(new, tmp_path / "f")
    loaded = fl.from_pretrained(tmp_path / "f").double().eval()
    torch.testing.assert_close(loaded(IDS), new(IDS), rtol=0, atol=1e-6)
    assert loaded.config.to_dict() == new.config.to_dict()


def test_include_ffn_only_leaves_attention_dense_and_covers_layer_ffns():
    ffns = [{"kind": "mlp", "mult": 2}, {"kind": "mlp", "mult": 3}]
    model = dense_model(layer_ffns=ffns)
    new = fl.transform(model, {"kind": "factorize_lowrank", "rank": 64, "include": ["ffn"]})
    assert new.config.attention.linear is None
    assert all(f.linear.kind == "lowrank" for f in new.config.layer_ffns)
    assert isinstance(new.transformer.blocks[1].ffn.fc1, LowRankLinear)
    assert not isinstance(new.transformer.blocks[0].attn.qkv_proj, LowRankLinear)
    torch.testing.assert_close(new(IDS), model(IDS), rtol=0, atol=1e-12)


def test_non_dense_projections_are_refused():
    model = dense_model(attention={"kind": "softmax", "linear": {"kind": "lowrank", "rank": 4}})
    with pytest.raises(fl.ConfigError, match="attention.linear.kind.*dense"):
        fl.transform(model, {"kind": "factorize_dense_sparse", "basis": 8})
    new = fl.transform(model, {"kind": "factorize_dense_sparse", "basis": 8, "include": ["ffn"]})
    assert isinstance(new.transformer.blocks[0].ffn.fc1, DenseSparseLinear)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"kind": "factorize_lowrank", "rank": 0}, "transform.rank"),
        ({"kind": "factorize_lowrank", "include": ["head"]}, r"transform.include\[0\]"),
        ({"kind": "factorize_lowrank", "include": []}, "transform.include"),
        ({"kind": "factorize_dense_sparse", "nonzeros": 0}, "transform.nonzeros"),
        ({"kind": "factorize_dense_sparse", "support": "x"}, "transform.support"),
    ],
)
def test_config_errors_name_the_field(spec, field):
    with pytest.raises(fl.ConfigError, match=field):
        fl.transform(dense_model(), spec)


def test_encoder_decoder_cross_attention_is_factorized_exactly_at_full_size():
    torch.manual_seed(0)
    spec = {"kind": "encoder_decoder", "vocab_size": 23, "dim": 16, "depth": 1, "num_heads": 2}
    model = fl.build_model(spec).double().eval()
    new = fl.transform(model, {"kind": "factorize_dense_sparse", "basis": 16, "nonzeros": 16})
    cross = new.decoder.blocks[0].cross_attn
    assert all(isinstance(p, DenseSparseLinear) for p in cross.kv_proj.parts)
    src, tgt = IDS, IDS[:, :5]
    torch.testing.assert_close(new(src, tgt), model(src, tgt), rtol=0, atol=1e-12)
