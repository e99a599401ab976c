"""Speed of mixture-of-experts decoders against the dense decoder of equal active parameters.

    python benchmarks/moe_speed.py                                  # gpt-small-cpu shape, 2 threads
    python benchmarks/moe_speed.py --preset gpt-tiny --set seq_len=64 --set train_repeats=5

Measures, side by side in one process with the project's speed protocol (``formerlab.bench.speed``:
interleaved rounds, medians of warm calls), the preset as is (dense MLP FFN) and the same model with
its FFN replaced by ``moe`` whose experts are each that MLP: top-1 over 4 and 8 experts (equal active
parameters, plus a ``dim x n`` router per layer), and top-2 over 4 (twice the active FFN). Prints one
JSON object: the ``formerlab bench speed`` result (training, forward and generation tokens/s, ratios
to the dense model, ``params`` and ``active_params`` per model). Weights are random: speed depends only
on the shapes (and, for MoE, on how evenly the random router spreads tokens, which is logged by the
training loop, not here). Numbers are machine facts: run on an idle machine and compare side by side.
"""

from __future__ import annotations

import argparse
import json

from formerlab.bench.speed import ModelSpec, protocol_from, speed_compare
from formerlab.models import ModelConfig, preset_dict

ARMS = {"moe4-top1": (4, 1), "moe8-top1": (8, 1), "moe4-top2": (4, 2)}


def specs(preset: str) -> list[ModelSpec]:
    """The dense preset first (the reference of the ratios), then its MoE variants."""
    dense = preset_dict(preset)
    out = [ModelSpec("dense", preset, ModelConfig.from_dict(dense, "model"))]
    for name, (experts, top_k) in ARMS.items():
        ffn = {"kind": "moe", "num_experts": experts, "top_k": top_k, "expert": dense["ffn"]}
        out.append(ModelSpec(name, preset, ModelConfig.from_dict({**dense, "ffn": ffn}, "model")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gpt-small-cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="protocol field=value")
    args = parser.parse_args()
    proto = protocol_from({"threads": args.threads}, args.set)
    print(json.dumps(speed_compare(specs(args.preset), **proto.to_dict())))


if __name__ == "__main__":
    main()
