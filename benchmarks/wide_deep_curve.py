"""The ``wide_attention`` check's deep arm alone: validation accuracy as training goes on.

    OMP_NUM_THREADS=1 python benchmarks/wide_deep_curve.py --task topics --steps 3000 --every 250
    OMP_NUM_THREADS=1 python benchmarks/wide_deep_curve.py --task keywords --strings 6 --seq-len 64 \\
        --position rope --steps 3000 --every 250

Trains the ``deep-4x4`` preset (4 layers x 4 heads, width 64) exactly as the check trains its arms
(:func:`formerlab.claims.wide_attention.arm_run`, :func:`formerlab.claims.lra.train_model`) on one
task, with a calibration seed (default 100) that the check never uses, and prints one JSON line
every ``--every`` steps: the mean training loss since the last line and the validation accuracy
with the majority-class baseline of the same examples. It answers two questions without looking at
the wide or the narrow arm (the module docstring's History): does training longer let depth pay off
on the pre-registered tasks, and does the deep model learn the ``keywords`` task (a single layer
needs a head per keyword position) at all.

``--task keywords`` uses 14 strings of 9 symbols in 128 tokens by default (the task's defaults;
``--strings`` / ``--seq-len`` change them) and evaluates 16 x 32 fixed validation examples.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from formerlab.claims import wide_attention as wide
from formerlab.claims.lra import seeded_model, train_model
from formerlab.models.presets import preset_dict
from formerlab.registry import TASK
from formerlab.run_config import load_config


def run_config(args: argparse.Namespace) -> Any:
    """The deep arm's run on ``args.task``, with the learning rate, positions and task sizes asked."""
    if args.task == "keywords":
        task = {"kind": "keywords", "seq_len": args.seq_len, "strings": args.strings}
        task["eval_batches"] = 16
        model = preset_dict("deep-4x4")
        model.update(vocab_size=16, max_seq_len=args.seq_len)
        model["head"] = {**model["head"], "num_classes": 2}
        train = {**wide.TRAIN_CONFIG, "steps": args.steps, "seed": args.seed}
        run = {"model": model, "task": task, "train": train}
    else:
        run = wide.arm_run("deep", args.steps, args.seed, args.task).to_dict()
    run["model"]["position"] = {"kind": args.position}
    run["train"]["optimizer"] = {**run["train"]["optimizer"], "lr": args.lr}
    return load_config(run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("topics", "listops", "keywords"), default="topics")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=250, help="steps between evaluations")
    parser.add_argument("--lr", type=float, default=1.0e-3)
    parser.add_argument("--position", choices=("learned", "rope"), default="learned")
    parser.add_argument("--seed", type=int, default=100, help="calibration seed (not 0, 1, 2)")
    parser.add_argument("--strings", type=int, default=14, help="keywords: strings per example")
    parser.add_argument("--seq-len", type=int, default=128, help="keywords: tokens per example")
    args = parser.parse_args(argv)
    if args.every < 1 or args.steps < args.every:
        parser.error(f"--every {args.every}: allowed 1 .. --steps ({args.steps})")
    run = run_config(args)
    task = TASK.entry(run.task.kind, "task.kind").impl(run.task, seed=args.seed)
    task.check_model(run.model, "model")
    model = seeded_model(run)
    losses: list[float] = []
    loss_of = task.loss

    def recorded_loss(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        loss, count = loss_of(m, batch)
        losses.append(float(loss.detach()))
        return loss, count

    task.loss = recorded_loss
    start = time.perf_counter()

    def on_step(step: int) -> None:
        if step % args.every:
            return
        model.eval()
        with torch.no_grad():
            found = task.evaluate(model, run.train.batch_size, "val")
        model.train()
        row = {
            "task": args.task,
            "step": step,
            "train_loss": round(sum(losses[-args.every :]) / args.every, 4),
            "val_accuracy": round(100 * found["accuracy"], 2),
            "majority": round(100 * found["majority_baseline"], 2),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(row), flush=True)

    train_model(run, task, model, on_step)


if __name__ == "__main__":
    main()
