"""Simulated 8-bit quantization and outlier metrics (formerlab.quant) against numpy references."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import formerlab
from formerlab.errors import InputError
from formerlab.quant import (
    block_outputs,
    fake_quant,
    ffn_outputs,
    kurtosis,
    outlier_stats,
    quant_params,
    simulated_w8a8,
)

TINY = {
    "kind": "decoder_lm",
    "vocab_size": 256,
    "dim": 32,
    "depth": 2,
    "num_heads": 2,
    "max_seq_len": 16,
}


def numpy_fake_quant(x: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Reference: asymmetric uniform quantize-dequantize over [min(lo,0), max(hi,0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    n = 2**bits - 1
    scale = (hi - lo) / n
    zp = int(np.clip(np.round(-lo / scale), 0, n))
    q = np.clip(np.round(x / scale) + zp, 0, n)
    return (q - zp) * scale


def numpy_kurtosis(row: np.ndarray) -> float:
    d = row - row.mean()
    return float(np.mean(d**4) / np.mean(d**2) ** 2)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return formerlab.build_model(TINY).double()


def batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 256, (3, 16), generator=g)} for _ in range(n)]


# -- fake_quant --------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("lo", "hi"), [(-1.3, 2.7), (0.5, 3.0), (-4.0, -0.25), (-1.0, 1.0)])
def test_fake_quant_matches_numpy(bits, lo, hi):
    rng = np.random.default_rng(bits)
    x = rng.uniform(lo - 1.0, hi + 1.0, size=(7, 13))  # some values outside the range
    got = fake_quant(torch.from_numpy(x), lo, hi, bits).numpy()
    np.testing.assert_allclose(got, numpy_fake_quant(x, lo, hi, bits), rtol=0, atol=1e-12)


def test_fake_quant_matches_torch_builtin():
    x = torch.randn(500, dtype=torch.float32) * 3
    lo, hi = -2.5, 4.0
    scale, zp = quant_params(lo, hi, 8)
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)
    torch.testing.assert_close(fake_quant(x, lo, hi, 8), ref, rtol=0, atol=1e-6)


def test_fake_quant_error_bounds_and_exact_points():
    x = torch.linspace(-1.0, 3.0, 1001, dtype=torch.float64)
    scale, zp = quant_params(-1.0, 3.0, 8)
    assert scale == pytest.approx(4.0 / 255) and zp == round(1.0 / scale)
    y = fake_quant(x, -1.0, 3.0, 8)
    assert float((y - x).abs().max()) <= scale / 2 + 1e-12
    zero = torch.zeros(1, dtype=torch.float64)
    assert float(fake_quant(zero, -1.0, 3.0, 8)) == 0.0  # zero is exact
    assert len(torch.unique(y)) <= 256
    far = torch.tensor([-100.0, 100.0], dtype=torch.float64)
    clipped = fake_quant(far, -1.0, 3.0, 8)
    assert float(clipped[0]) == pytest.approx(-zp * scale) and float(clipped[1]) == pytest.approx(
        (255 - zp) * scale
    )


def test_range_widened_to_zero_and_degenerate_range():
    assert quant_params(2.0, 5.0, 8)[1] == 0  # [0, 5]: zero point at the bottom
    assert quant_params(-5.0, -2.0, 8)[1] == 255  # [-5, 0]: zero point at the top
    zeros = torch.zeros(4)
    assert torch.equal(fake_quant(zeros, 0.0, 0.0), zeros)


@pytest.mark.parametrize(
    ("lo", "hi", "bits"), [(1.0, 0.0, 8), (float("nan"), 1.0, 8), (0.0, 1.0, 1), (0.0, 1.0, True)]
)
def test_bad_range_or_bits_rejected(lo, hi, bits):
    with pytest.raises(InputError):
        fake_quant(torch.ones(2), lo, hi, bits)


# -- kurtosis ----------------------------------------------------------------------------------


def test_kurtosis_matches_numpy_per_row():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(size=300), rng.laplace(size=300), rng.uniform(size=300)])
    x[1, 5] = 40.0  # one outlier
    got = kurtosis(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, [numpy_kurtosis(r) for r in x], rtol=1e-12)


def test_kurtosis_known_values():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(1, 200_000, generator=g, dtype=torch.float64)
    assert float(kurtosis(gauss)) == pytest.approx(3.0, abs=0.05)
    two_point = torch.tensor([[-1.0, 1.0] * 50], dtype=torch.float64)
    assert float(kurtosis(two_point)) == pytest.approx(1.0, abs=1e-12)
    spike = torch.zeros(1, 1000, dtype=torch.float64)
    spike[0, 0] = 1.0
    assert float(kurtosis(spike)) > 900  # one outlier among n: kurtosis ~ n


def test_kurtosis_rejects_bad_shapes():
    with pytest.raises(InputError):
        kurtosis(torch.ones(5))
    with pytest.raises(InputError):
        kurtosis(torch.ones(3, 1))


# -- outlier_stats -----------------------------------------------------------------------------


def test_outlier_stats_equal_a_manual_computation(tiny_model):
    data = batches(2)
    captured: dict[str, list[torch.Tensor]] = {}
    watch = {**ffn_outputs(tiny_model), **block_outputs(tiny_model)}
    assert set(watch) == {"block0.ffn", "block1.ffn", "block0", "block1"}
    handles = [
        m.register_forward_hook(lambda m, a, out, n=n: captured.setdefault(n, []).append(out))
        for n, m in watch.items()
    ]
    with torch.no_grad():
        for b in data:
            tiny_model(b["input_ids"])
    for h in handles:
        h.remove()
    stats = outlier_stats(tiny_model, data, watch)
    for name, outs in captured.items():
        rows = torch.cat([o.reshape(o.size(0), -1) for o in outs]).numpy()
        assert stats["kurtosis"][name] == pytest.approx(np.mean([numpy_kurtosis(r) for r in rows]))
        assert stats["inf_norm"][name] == pytest.approx(np.mean(np.abs(rows).max(axis=1)))
    assert stats["avg_kurtosis"] == pytest.approx(np.mean(list(stats["kurtosis"].values())))
    assert stats["max_inf_norm"] == max(stats["inf_norm"].values())
    assert not any(m._forward_hooks for m in watch.values())  # hooks removed


def test_planted_outlier_raises_kurtosis_and_inf_norm(tiny_model):
    watch = ffn_outputs(tiny_model)
    before = outlier_stats(tiny_model, batches(1), watch)
    with torch.no_grad():
        tiny_model.transformer.blocks[0].ffn.fc2.bias[3] += 50.0  # one outlier channel
    after = outlier_stats(tiny_model, batches(1), watch)
    assert after["kurtosis"]["block0.ffn"] > 5 * before["kurtosis"]["block0.ffn"]
    assert after["max_inf_norm"] > 40
    assert after["kurtosis"]["block1.ffn"] == pytest.approx(
        before["kurtosis"]["block1.ffn"], rel=0.5
    )


# -- simulated W8A8 ----------------------------------------------------------------------------


def test_w8a8_quantizes_inside_and_restores_everything(tiny_model):
    x = batches(1, seed=1)[0]["input_ids"]
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with torch.no_grad():
        ref = tiny_model(x)
        with simulated_w8a8(tiny_model, batches(2)) as model:
            assert model is tiny_model
            for m in model.modules():
                if isinstance(m, torch.nn.Linear):
                    assert len(torch.unique(m.weight)) <= 256
            quantized = model(x)
        again = tiny_model(x)
    assert not torch.equal(quantized, ref)
    assert float((quantized - ref).abs().max()) < 0.1 * float(ref.abs().max())
    assert torch.equal(again, ref)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_model.modules())


def test_w8a8_activations_take_few_values(tiny_model):
    block = tiny_model.transformer.blocks[1]
    seen = []
    with simulated_w8a8(tiny_model, batches(2)):
        handle = block.register_forward_hook(lambda m, a, out: seen.append(out))  # after the quant
        with torch.no_grad():
            tiny_model(batches(1, seed=3)[0]["input_ids"])
        handle.remove()
    assert len(torch.unique(seen[0])) <= 256


def _stream(model, x, bits=None):
    """Block 0's output (the residual stream) in float, or as the W8A8 simulation passes it on."""
    block = model.transformer.blocks[0]
    seen = []
    with contextlib.ExitStack() as stack:
        if bits is not None:
            stack.enter_context(simulated_w8a8(model, batches(2), bits=bits))
        handle = block.register_forward_hook(lambda m, a, out: seen.append(out))
        with torch.no_grad():
            model(x)
        handle.remove()
    return seen[0]


def test_more_bits_is_closer_and_outliers_hurt(tiny_model):
    x = batches(1, seed=1)[0]["input_ids"]
    ref = _stream(tiny_model, x)
    errors = {b: float((_stream(tiny_model, x, b) - ref).abs().max()) for b in (4, 8, 16)}
    assert errors[16] < errors[8] < errors[4]
    with torch.no_grad():
        tiny_model.transformer.blocks[0].ffn.fc2.bias[3] += 50.0  # one outlier channel
    ref = _stream(tiny_model, x)
    others = [c for c in range(ref.size(-1)) if c != 3]
    error = float((_stream(tiny_model, x, 8) - ref)[..., others].abs().max())
    assert error > 10 * errors[8]  # the outlier widens the range: the other channels lose precision


def test_w8a8_restores_after_an_error(tiny_model):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), simulated_w8a8(tiny_model, batches(1)):
        raise RuntimeError("boom")
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_model.modules())


def test_w8a8_rejects_no_calibration_and_bad_bits(tiny_model):
    with pytest.raises(InputError, match="calibration"), simulated_w8a8(tiny_model, []):
        pass
    with pytest.raises(InputError, match="bits"), simulated_w8a8(tiny_model, batches(1), bits=0):
        pass
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_model.modules())
