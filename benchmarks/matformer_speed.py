"""Speed and size of the submodels cut from one MatFormer model, one per granularity.

    python benchmarks/matformer_speed.py                    # gpt-small-cpu sized, 2 threads
    python benchmarks/matformer_speed.py --set seq_len=128 --set train_repeats=5

Builds a ``gpt-small-cpu``-shaped decoder whose FFN is ``{kind: matformer, granularities: [0.125,
0.25, 0.5, 1.0]}``, extracts a standalone model per granularity (``matformer_extract``), writes each
extracted config to a YAML file and measures them all side by side with ``formerlab bench speed
--config ... --json`` (the project's protocol: interleaved rounds, medians). Prints one JSON object:
``{"granularities": [...], "ffn_hidden": [...], "bench": <formerlab bench speed output>}``; the bench
output lists the models in granularity order, with their parameter counts. Weights are random: the
speed of a model depends only on its shape.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import formerlab as fl
from formerlab.models import preset_dict

GRANULARITIES = [0.125, 0.25, 0.5, 1.0]


def extracted_configs(out: Path) -> tuple[list[Path], list[int]]:
    """One YAML model config per granularity, and each one's FFN hidden width."""
    nested_cfg = preset_dict("gpt-small-cpu")
    nested_cfg["ffn"] = {
        "kind": "matformer",
        "granularities": GRANULARITIES,
        "inner": nested_cfg["ffn"],
    }
    nested = fl.build_model(nested_cfg)
    paths, widths = [], []
    for g in GRANULARITIES:
        sub = fl.transform(nested, {"kind": "matformer_extract", "fraction": g})
        path = out / f"matformer_{g:g}.yaml"
        path.write_text(sub.config.to_yaml(), encoding="utf-8")
        paths.append(path)
        widths.append(sub.transformer.blocks[0].ffn.fc2.in_features)
    return paths, widths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="protocol field=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths, widths = extracted_configs(Path(tmp))
        command = [sys.executable, "-m", "formerlab.cli", "bench", "speed", "--json"]
        command += ["--threads", str(args.threads)]
        for path in paths:
            command += ["--config", str(path)]
        for item in args.set:
            command += ["--set", item]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"formerlab bench speed failed:\n{done.stderr}")
    bench = json.loads(done.stdout)
    print(json.dumps({"granularities": GRANULARITIES, "ffn_hidden": widths, "bench": bench}))


if __name__ == "__main__":
    main()
