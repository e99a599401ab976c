"""FIT against full softmax attention: forward time and attention FLOPs as the sequence grows.

    python benchmarks/fit_cost.py                                   # L = 256 .. 4096, n = 4 L^(1/3)
    python benchmarks/fit_cost.py --lengths 512 1024 --group-size 32 --repeats 7

Chen & Li, 2023, "FIT: Far-reaching Interleaved Transformers", arXiv:2305.12689: with groups of
``n ~ L^(1/3)`` tokens and a fixed number of latents per group, local (``G n^2``) and global
(``(G m)^2``) attention both cost ``Theta(L^(4/3))``. For each length both encoders (random weights,
same width; full attention with ``depth * local_layers`` layers, FIT with ``depth`` blocks of one
local and one global layer) run a batch forward under ``inference_mode``; the arms alternate inside
every repeat (side by side, same machine state) and the median of the warm repeats is reported with
the analytic attention FLOPs (:func:`formerlab.models.fit.attention_flops`). Prints one JSON object
with a row per length and the least-squares log-log slopes of time and FLOPs against ``L``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

import torch

import formerlab as fl
from formerlab.models.fit import attention_flops, full_attention_flops


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def group_size_for(length: int, args: argparse.Namespace) -> int:
    """``--group-size`` if given, else ``round(c * L^(1/3))`` (``--cube-root-scale`` c)."""
    if args.group_size:
        return args.group_size
    return max(1, round(args.cube_root_scale * length ** (1 / 3)))


def configs(length: int, n: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    base = {
        "vocab_size": 256,
        "dim": args.dim,
        "num_heads": args.heads,
        "max_seq_len": length,
        "position": {"kind": "none"},
        "head": {"kind": "none"},
    }
    fit = {"kind": "fit", **base, "depth": args.depth, "group_size": n}
    fit.update(latents_per_group=args.latents, local_layers=1, global_layers=1)
    return {"full": {"kind": "encoder", **base, "depth": args.depth}, "fit": fit}


def time_arms(models: dict[str, torch.nn.Module], ids: torch.Tensor, repeats: int) -> dict:
    """Median forward seconds per arm; one warm-up each, then the arms alternate every repeat."""
    seconds: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.inference_mode():
        for model in models.values():
            model.encode(ids)
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                models[name].encode(ids)
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in seconds.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    rows = []
    for length in args.lengths:
        n = group_size_for(length, args)
        cfgs = configs(length, n, args)
        torch.manual_seed(0)
        models = {name: fl.build_model(cfg).eval() for name, cfg in cfgs.items()}
        ids = torch.randint(0, 256, (args.batch, length))
        secs = time_arms(models, ids, args.repeats)
        flops = {
            "fit": attention_flops(models["fit"].config, length),
            "full": full_attention_flops(length, args.dim, args.depth),
        }
        rows.append(
            {
                "seq_len": length,
                "group_size": n,
                "groups": math.ceil(length / n),
                "fit_ms": 1e3 * secs["fit"],
                "full_ms": 1e3 * secs["full"],
                "time_ratio": secs["fit"] / secs["full"],
                "fit_attention_flops": flops["fit"],
                "full_attention_flops": flops["full"],
                "flops_ratio": flops["fit"] / flops["full"],
            }
        )
    lengths = [r["seq_len"] for r in rows]
    fits = {}
    if len(rows) > 1:
        for arm in ("fit", "full"):
            fits[f"{arm}_time_slope"] = slope(lengths, [r[f"{arm}_ms"] for r in rows])
            fits[f"{arm}_flops_slope"] = slope(lengths, [r[f"{arm}_attention_flops"] for r in rows])
    settings = {k: v for k, v in vars(args).items() if k != "lengths"}
    return {"benchmark": "fit_cost", "settings": settings, "rows": rows, "loglog_slopes": fits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--group-size", type=int, default=0, help="fixed n (0: n = c L^(1/3))")
    parser.add_argument("--cube-root-scale", type=float, default=4.0, help="c in n = c L^(1/3)")
    parser.add_argument("--latents", type=int, default=4, help="latents per group (m)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2, help="FIT blocks = full-attention layers")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    print(json.dumps(run(parser.parse_args()), indent=1))


if __name__ == "__main__":
    main()
