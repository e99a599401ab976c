"""``ops.norms.rms_norm``: torch's values, closed-form gradients (float64, gradcheck and against
autograd through ``F.rms_norm``), with and without a gain, and the RMSNorm layer uses it."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from formerlab.layers.norm.rmsnorm import RMSNormConfig
from formerlab.ops.norms import rms_norm
from formerlab.registry import NORM


@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12)])
@pytest.mark.parametrize("gain", [True, False])
def test_values_and_gradients_equal_autograd_through_torch(shape, gain) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).requires_grad_()
    w = (torch.rand(12, generator=g, dtype=torch.float64) + 0.5).requires_grad_() if gain else None
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    ours = rms_norm(x, w, 1e-5)
    ref = F.rms_norm(x, (12,), w, 1e-5)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-13)
    inputs = (x, w) if gain else (x,)
    for a, b in zip(
        torch.autograd.grad(ours, inputs, dy), torch.autograd.grad(ref, inputs, dy), strict=True
    ):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_gradcheck_and_double_backward() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-3), (x, w))
    assert torch.autograd.gradgradcheck(lambda a, b: rms_norm(a, b, 1e-3), (x, w))


def test_only_the_needed_gradients_and_torch_values_without_grad() -> None:
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64)  # a frozen gain
    (dx,) = torch.autograd.grad(rms_norm(x, w, 1e-6).sum(), (x,))
    (ref,) = torch.autograd.grad(F.rms_norm(x, (8,), w, 1e-6).sum(), (x,))
    assert torch.allclose(dx, ref, rtol=0, atol=1e-12)
    with torch.no_grad():
        y = rms_norm(x, w, 1e-6)
    assert y.grad_fn is None
    assert torch.allclose(y, F.rms_norm(x.detach(), (8,), w, 1e-6), rtol=0, atol=1e-14)
    x32 = torch.randn(64, 256) * 10
    assert torch.allclose(rms_norm(x32, None, 1e-5), F.rms_norm(x32, (256,), None, 1e-5), atol=1e-5)


def test_rmsnorm_layer_trains_through_it() -> None:
    layer = NORM.build(RMSNormConfig(bias=True), dim=8).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    inner = out.grad_fn.next_functions[0][0]  # out = rms_norm(x) * g + b
    assert "RMSNorm" in type(inner).__name__
    ref = F.rms_norm(x, (8,), layer.weight, layer.config.eps) + layer.bias
    assert torch.allclose(out, ref, rtol=0, atol=1e-13)
