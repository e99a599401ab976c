"""LayerNorm, torch's RMSNorm and formerlab's RMSNorm on CPU: forward and forward+backward time.

    OMP_NUM_THREADS=1 python benchmarks/norm_speed.py                  # 16 x 256 x 256 floats
    python benchmarks/norm_speed.py --shape 8 512 512 --repeats 100

The three run side by side: every repeat calls each once, in turn, and the median of the warm calls
is reported, in milliseconds, with each one's ratio to ``layer_norm``. ``fwd`` runs without
autograd; ``fwd_bwd`` takes the gradients of input and gain for a fixed random output gradient.
Prints one JSON object. (Why :mod:`formerlab.ops.norms` exists: torch's CPU ``rms_norm`` runs as
its decomposition.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from formerlab.ops.norms import rms_norm


def kernels(dim: int) -> dict[str, Callable]:
    return {
        "layer_norm": lambda x, w, b: F.layer_norm(x, (dim,), w, b),
        "torch_rms_norm": lambda x, w, b: F.rms_norm(x, (dim,), w, 1e-5),
        "formerlab_rms_norm": lambda x, w, b: rms_norm(x, w, 1e-5),
    }


def timed(fns: dict[str, Callable], call: Callable, repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of ``call(fn)`` per function, interleaved, after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            call(fn)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[16, 256, 256])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(n < 1 for n in args.shape):
        parser.error("--repeats and every --shape entry must be >= 1")
    torch.manual_seed(0)
    dim = args.shape[-1]
    x = torch.randn(*args.shape, requires_grad=True)
    w = (torch.rand(dim) + 0.5).requires_grad_()
    b = torch.randn(dim, requires_grad=True)
    dy = torch.randn(*args.shape)
    fns = kernels(dim)

    def forward(fn: Callable) -> None:
        with torch.no_grad():
            fn(x, w, b)

    def forward_backward(fn: Callable) -> None:
        torch.autograd.grad(fn(x, w, b), (x, w), dy)

    result = {"shape": args.shape, "threads": torch.get_num_threads(), "torch": torch.__version__}
    for phase, call in (("fwd", forward), ("fwd_bwd", forward_backward)):
        ms = timed(fns, call, args.repeats, args.warmup)
        result[phase] = {
            name: {"ms": round(t, 4), "vs_layer_norm": round(t / ms["layer_norm"], 3)}
            for name, t in ms.items()
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
