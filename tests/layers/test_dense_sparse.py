"""The ``dense_sparse`` linear kind (DSFormer): parameter count, the per-column top-s support, the
straight-through factorizer against the fixed support, and the config rules."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.layers.linear import DenseSparseConfig, DenseSparseLinear, make_linear
from formerlab.layers.linear.dense_sparse import dense_sparse_params, ratio_basis, top_s_mask


def build(in_features=12, out_features=10, bias=True, **cfg) -> DenseSparseLinear:
    torch.manual_seed(0)
    config = DenseSparseConfig.from_dict({"kind": "dense_sparse", **cfg})
    return make_linear(config, in_features, out_features, bias=bias)


@pytest.mark.parametrize("support", ["stf", "fixed"])
@pytest.mark.parametrize(("n_in", "n_out", "k", "s"), [(12, 10, 6, 2), (9, 16, 5, 5)])
def test_parameter_count_is_out_k_plus_in_s(support, n_in, n_out, k, s):
    layer = build(n_in, n_out, basis=k, nonzeros=s, support=support)
    assert layer.D.shape == (n_out, k) and layer.S_latent.shape == (k, n_in)
    stored = layer.D.numel() + int(layer.support_mask().sum()) + layer.bias.numel()
    assert layer.num_parameters() == stored == n_out * k + n_in * s + n_out
    assert dense_sparse_params(n_in, n_out, k, s) == n_out * k + n_in * s
    assert layer.index_bits() == n_in * s * math.ceil(math.log2(k))


@pytest.mark.parametrize(
    ("ratio", "s", "n_in", "n_out", "expected"),
    [(0.5, 2, 16, 16, 6), (0.4, 4, 64, 64, 21), (0.4, 4, 64, 256, 24), (0.5, 2, 64, 16, 24)],
)
def test_ratio_gives_the_widest_basis_within_the_budget(ratio, s, n_in, n_out, expected):
    k = ratio_basis(ratio, s, n_in, n_out)
    assert k == expected
    assert dense_sparse_params(n_in, n_out, k, s) <= ratio * n_in * n_out
    assert dense_sparse_params(n_in, n_out, k + 1, s) > ratio * n_in * n_out
    assert build(n_in, n_out, ratio=ratio, nonzeros=s).basis == expected


@pytest.mark.parametrize("support", ["stf", "fixed"])
def test_mask_keeps_exactly_s_largest_per_column(support):
    layer = build(basis=7, nonzeros=3, support=support)
    mask = layer.support_mask()
    assert mask.dtype == torch.bool and (mask.sum(0) == 3).all()
    magnitude = layer.S_latent.detach().abs()
    smallest_kept = torch.where(mask, magnitude, torch.inf).amin(0)
    largest_dropped = torch.where(mask, -torch.inf, magnitude).amax(0)
    assert (smallest_kept >= largest_dropped).all()


def test_mask_keeps_exactly_s_even_with_ties():
    mask = top_s_mask(torch.ones(5, 4), 2)
    assert (mask.sum(0) == 2).all()


def test_with_s_equal_k_the_layer_is_d_times_latent_exactly():
    layer = build(basis=6, nonzeros=6).double()
    torch.testing.assert_close(layer.effective_weight(), layer.D @ layer.S_latent, rtol=0, atol=0)
    x = torch.randn(4, 3, 12, dtype=torch.float64)
    expected = x @ (layer.D @ layer.S_latent).T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("support", ["stf", "fixed"])
def test_forward_applies_the_masked_product_in_float64(support):
    layer = build(basis=6, nonzeros=2, support=support).double()
    with torch.no_grad():
        layer.bias.normal_()
    mask = layer.support_mask()
    w = layer.D @ torch.where(mask, layer.S_latent, 0.0)
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(layer.effective_weight(), w, rtol=0, atol=1e-15)
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias, rtol=1e-13, atol=1e-13)


def _latent_grad(support: str) -> tuple[DenseSparseLinear, torch.Tensor]:
    layer = build(basis=6, nonzeros=2, support=support).double()
    x = torch.randn(8, 12, dtype=torch.float64)
    layer(x).pow(2).sum().backward()
    return layer, layer.S_latent.grad


def test_stf_gradient_reaches_masked_entries_and_is_the_dense_gradient():
    layer, grad = _latent_grad("stf")
    mask = layer.support_mask()
    assert grad[~mask].abs().min() > 0  # every masked entry gets a gradient
    # straight through: the gradient of S itself, i.e. D^T (dL/dW)
    x = torch.randn(8, 12, dtype=torch.float64)
    s = (layer.S_latent * mask).detach().requires_grad_(True)
    torch.nn.functional.linear(x @ s.T, layer.D.detach(), layer.bias.detach()).pow(
        2
    ).sum().backward()
    layer.S_latent.grad = None
    layer(x).pow(2).sum().backward()
    torch.testing.assert_close(layer.S_latent.grad, s.grad, rtol=1e-12, atol=1e-12)


def test_fixed_gradient_stays_on_the_support():
    layer, grad = _latent_grad("fixed")
    mask = layer.support_mask()
    assert not grad[~mask].any() and grad[mask].abs().min() > 0


def _favour_a_masked_entry(support: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """SGD on S̃ with a loss that asks W's column 0 to use a basis vector outside its support."""
    layer = build(basis=4, nonzeros=1, support=support).double()
    before = layer.support_mask().clone()
    masked_row = int((~before[:, 0]).nonzero()[0])
    target = layer.effective_weight().detach().clone()
    target[:, 0] = 10.0 * layer.D[:, masked_row].detach()
    optimizer = torch.optim.SGD([layer.S_latent], lr=1.0)
    for _ in range(20):
        optimizer.zero_grad()
        (layer.D @ layer.sparse_factor() - target).pow(2).sum().backward()  # the forward's W
        optimizer.step()
    return before, layer.support_mask(), masked_row


def test_support_moves_under_stf_but_not_when_fixed():
    before, after, row = _favour_a_masked_entry("stf")
    assert not before[row, 0] and after[row, 0]
    assert (after.sum(0) == 1).all()
    before, after, row = _favour_a_masked_entry("fixed")
    assert torch.equal(before, after)


def test_fixed_support_is_saved_with_the_weights():
    layer = build(basis=6, nonzeros=2, support="fixed")
    other = build(basis=6, nonzeros=2, support="fixed")
    with torch.no_grad():
        other.S_latent.normal_()
        other.reset_support_()
    assert not torch.equal(other.mask, layer.mask)
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer.mask, other.mask)
    assert "mask" not in build(basis=6, nonzeros=2).state_dict()


def test_init_normal_gives_the_product_the_requested_std():
    torch.manual_seed(1)
    layer = make_linear(DenseSparseConfig(basis=32, nonzeros=4), 256, 256, bias=True)
    for std in (0.02, 0.5):
        layer.init_normal_(std)
        assert layer.effective_weight().std().item() == pytest.approx(std, rel=0.05)
        kept = layer.S_latent[layer.support_mask()]
        assert kept.pow(2).mean().sqrt().item() == pytest.approx(layer.D.std().item(), rel=0.05)


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"nonzeros": 0}, "ds.nonzeros"),
        ({"basis": 4, "ratio": 0.3}, "ds.ratio"),
        ({"basis": 2, "nonzeros": 3}, "ds.basis"),
        ({"ratio": 0.0}, "ds.ratio"),
        ({"ratio": 2.0}, "ds.ratio"),
        ({"support": "learned"}, "ds.support"),
    ],
)
def test_config_errors_name_the_field(cfg, field):
    with pytest.raises(fl.ConfigError, match=field):
        DenseSparseConfig.from_dict({"kind": "dense_sparse", **cfg}, "ds")


def test_a_budget_below_the_nonzeros_is_refused_at_build():
    with pytest.raises(fl.ConfigError, match="ratio.*nonzeros 4"):
        build(8, 8, ratio=0.2, nonzeros=4)
