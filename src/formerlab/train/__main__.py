"""``python -m formerlab.train CONFIG --out DIR [--resume] [--set a.b=c ...]``: train one run.

A minimal entry point (the full CLI is ``formerlab train``); it prints the run summary as one JSON
line and turns a formerlab error into one line on stderr and exit status 2.

Example::

    python -m formerlab.train configs/examples/code-lm-tiny.yaml --out runs/tiny --set train.steps=50
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..errors import FormerlabError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m formerlab.train",
        description="Train one run (see DESIGN §5 for the run file and run directory).",
    )
    parser.add_argument("config", help="run file (YAML or JSON)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.steps=100 (repeatable)",
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None)
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .. import load_config
    from .trainer import train

    try:
        run = load_config(args.config, overrides=args.overrides)
        summary = train(run, args.out, resume=args.resume, progress=args.progress)
    except FormerlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
