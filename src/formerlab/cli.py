"""The ``formerlab`` command line: train, eval, generate, convert, info, claims, bench, demo.

Errors a user can cause print one line (``error: ...``) and exit with status 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from .errors import FormerlabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="formerlab: Transformer efficiency techniques, trained and measured on your machine.",
)
claims_app = typer.Typer(no_args_is_help=True, help="Paper claim checks: list them, run them.")
bench_app = typer.Typer(no_args_is_help=True, help="Speed and memory benchmarks (JSON figures).")
app.add_typer(claims_app, name="claims")
app.add_typer(bench_app, name="bench")

console = Console()
_state = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def _table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*(_fmt(row.get(c, "")) for c in columns))
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else str(value)


# -- train / eval / generate -------------------------------------------------------------------


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Run file (YAML/JSON): model, task, train.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field, e.g. model.depth=2.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<config>).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest valid checkpoint.")
    ] = False,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Force the progress bar on/off.")
    ] = None,
) -> None:
    """Train a model from a run file.

    Example: formerlab train configs/examples/code-lm-tiny.yaml --set train.steps=200 --out runs/tiny
    """
    from .run_config import load_config
    from .train import train as run_training

    run = load_config(config, overrides=set_ or [])
    out = out or Path("runs") / config.stem
    summary = run_training(run, out, resume=resume, progress=progress)
    rows = [{"metric": k, "value": v} for k, v in (summary.get("val") or {}).items()]
    rows += [{"metric": "final_step", "value": summary.get("final_step")}]
    rows += [{"metric": k, "value": summary.get(k)} for k in ("params", "active_params")]
    console.print(_table(f"run {out}", rows))


@app.command("eval")
def evaluate(
    directory: Annotated[Path, typer.Argument(help="A run directory made by `formerlab train`.")],
    batch_size: Annotated[int | None, typer.Option(help="Evaluation batch size.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line.")] = False,
) -> None:
    """Evaluate the newest valid checkpoint of a run on its task's validation split.

    Example: formerlab eval runs/tiny --json
    """
    import torch

    from .registry import TASK
    from .runs import load_trained

    loaded = load_trained(directory)
    if loaded.run is None:
        raise FormerlabError(f"{directory}: a save_pretrained directory has no task to evaluate")
    run = loaded.run
    task = TASK.build(run.task, seed=run.train.seed, workdir=None)
    with torch.no_grad():
        metrics = task.evaluate(loaded.model, batch_size or run.train.batch_size)
    metrics = {"step": loaded.step, **metrics}
    if as_json:
        print(json.dumps(metrics))
    else:
        console.print(
            _table(f"eval {directory}", [{"metric": k, "value": v} for k, v in metrics.items()])
        )


@app.command()
def generate(
    directory: Annotated[Path, typer.Argument(help="A run or save_pretrained directory.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Sample among the k best tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.")] = 0.95,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = 0,
    compile_decode: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Decode on fixed buffers with one compiled step (pays off for long outputs; the "
            "first call compiles, ~20 s).",
        ),
    ] = False,
) -> None:
    """Continue a prompt with a trained decoder LM.

    Example: formerlab generate runs/demo --prompt "def main(" --max-new-tokens 200
    """
    from .runs import load_trained

    loaded = load_trained(directory)
    model_cfg = loaded.model.config
    is_lm = "decoder_lm" in (model_cfg.kind, getattr(model_cfg, "interface", None))
    if not hasattr(loaded.model, "generate") or not is_lm:
        raise FormerlabError(
            f"{directory}: generate needs a decoder_lm, got {loaded.model.config.kind}"
        )
    ids = loaded.tokenizer.encode(prompt) or [0]
    room = loaded.model.config.max_seq_len - len(ids)
    if room < 1:
        raise FormerlabError(f"--prompt: {len(ids)} tokens leave no room under max_seq_len")
    out = loaded.model.generate(
        [ids],
        min(max_new_tokens, room),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        compile=compile_decode,
    )[0]
    print(loaded.tokenizer.decode(out))


@app.command()
def convert(
    directory: Annotated[Path, typer.Argument(help="A run or save_pretrained directory.")],
    out: Annotated[Path, typer.Argument(help="New model directory (must not exist yet).")],
    kind: Annotated[
        str | None, typer.Option(help="Transform kind, e.g. pre_ln_to_rmsnorm.")
    ] = None,
    spec: Annotated[
        str | None,
        typer.Option("--transform", help='Transform as JSON/YAML, e.g. \'{"kind": "..."}\'.'),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Transform field, e.g. fraction=0.5.")
    ] = None,
) -> None:
    """Apply a registered transform to a trained model and save the new model (config.yaml +
    model.safetensors + tokenizer) in OUT, written to a temporary folder and renamed when complete.

    Example: formerlab convert runs/tiny runs/tiny-rmsnorm --kind pre_ln_to_rmsnorm
    """
    from .models import save_pretrained
    from .runs import load_trained
    from .transforms import transform

    cfg = _transform_spec(kind, spec, set_ or [])
    if out.exists():
        raise FormerlabError(
            f"{out}: already exists; choose a new directory for the converted model"
        )
    loaded = load_trained(directory)
    model = transform(loaded.model, cfg)
    _publish_dir(out, lambda tmp: save_pretrained(model, tmp, loaded.tokenizer))
    before, after = (sum(p.numel() for p in m.parameters()) for m in (loaded.model, model))
    console.print(f"{directory} -> {out} ({cfg.kind}; parameters {before:,} -> {after:,})")


def _transform_spec(kind: str | None, spec: str | None, overrides: list[str]) -> Any:
    """The validated transform config from --kind or --transform, with --set fields applied."""
    import yaml

    from .config import apply_overrides
    from .errors import ConfigError
    from .transforms import TransformConfig

    if (kind is None) == (spec is None):
        raise ConfigError("convert: give exactly one of --kind KIND or --transform SPEC")
    data: Any = {"kind": kind}
    if spec is not None:
        try:
            data = yaml.safe_load(spec)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--transform: cannot parse {spec!r}: {exc}") from None
        data = {"kind": data} if isinstance(data, str) else data
        if not isinstance(data, dict):
            raise ConfigError(f"--transform: {spec!r}; allowed: a mapping with a 'kind'")
    return TransformConfig.from_dict(apply_overrides(data, overrides), "transform")


def _publish_dir(out: Path, write: Any) -> None:
    """``write(tmp)`` fills a temporary folder beside ``out``, renamed to ``out`` when complete;
    on any error it is removed, so ``out`` never exists half-written."""
    import os
    import shutil
    import tempfile

    from .fileio import chmod_default, fsync_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        write(tmp)
        chmod_default(tmp)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)


# -- info ---------------------------------------------------------------------------------------


@app.command()
def info(
    group: Annotated[
        str | None, typer.Argument(help="A registry group (attention, norm, ...) or 'presets'.")
    ] = None,
    name: Annotated[
        str | None, typer.Argument(help="One registered name: show its fields.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List what is registered: groups, the kinds of a group, or one kind's fields.

    Example: formerlab info attention softmax
    """
    from .models import list_presets
    from .registry import GROUPS, describe, list_registered

    if group == "presets":
        rows = [{"preset": n, "description": d} for n, d in list_presets()]
    elif group is None:
        rows = [{"group": g, "registered": ", ".join(list_registered(g))} for g in GROUPS]
    elif name is None:
        rows = [_summary_row(group, n, describe) for n in list_registered(group)]
    else:
        d = describe(group, name)
        if as_json:
            print(json.dumps(d, default=str))
            return
        console.print(f"[bold]{group} / {name}[/]  {d['paper']}\n{d['summary']}")
        caps = ", ".join(k for k, v in d["capabilities"].items() if v)
        if caps:
            console.print(f"capabilities: {caps}")
        for key, value in d.get("extra", {}).items():
            console.print(f"{key}: {value}", highlight=False)
        rows = d["fields"]
    if as_json:
        print(json.dumps(rows, default=str))
    else:
        console.print(_table(f"formerlab {group or 'groups'}", rows))


def _summary_row(group: str, name: str, describe: Any) -> dict[str, Any]:
    d = describe(group, name)
    caps = ", ".join(k.removeprefix("supports_") for k, v in d["capabilities"].items() if v)
    row = {"name": name, "paper": d["paper"], "summary": d["summary"]}
    return {**row, "capabilities": caps} if d["capabilities"] else row


# -- claims -------------------------------------------------------------------------------------


@claims_app.command("list")
def claims_list(
    results: Annotated[Path, typer.Option(help="Where `claims run` wrote its JSON.")] = Path(
        "runs/claims"
    ),
) -> None:
    """Table of registered claim checks and the status of their last run.

    Example: formerlab claims list
    """
    from .claims import list_claims

    rows = list_claims(results)
    if not rows:
        console.print("no claim checks are registered yet")
        return
    console.print(_table("claim checks", rows))


@claims_app.command("run")
def claims_run(
    names: Annotated[
        list[str], typer.Argument(help="Claim keys (see `formerlab claims list`), or `all`.")
    ],
    budget: Annotated[
        str, typer.Option(help="quick (<= 3 min each) or full (<= 15 min).")
    ] = "quick",
    out: Annotated[Path, typer.Option(help="Directory for the result JSON files.")] = Path(
        "runs/claims"
    ),
) -> None:
    """Run claim checks and write one JSON result per check.

    Example: formerlab claims run lra --budget quick
    """
    from .claims import run_claims
    from .registry import CLAIM

    keys = CLAIM.names() if names == ["all"] else names
    results = run_claims(keys, budget, out, log=lambda m: console.print(m))
    cols = ["key", "status", "ours", "paper_value", "passed", "control_passed", "seconds"]
    console.print(_table("claim results", results, cols))
    if any(r["status"] == "broken" for r in results):
        raise typer.Exit(1)


@claims_app.command("report")
def claims_report(
    results: Annotated[Path, typer.Option(help="Where `claims run` wrote its JSON.")] = Path(
        "runs/claims"
    ),
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write [default: RESULTS/report.html].")
    ] = None,
) -> None:
    """One HTML page with a card per paper: the claim, the paper's number beside ours, the negative
    control, every seed's value, the criterion and the command that reproduces it.

    Example: formerlab claims run lra primer && formerlab claims report
    """
    from .report.claims import write_claims_report

    path = write_claims_report(results, out if out is not None else results / "report.html")
    console.print(f"report: {path}")


# -- bench --------------------------------------------------------------------------------------


class _KeepArgsCommand(TyperCommand):
    """A command that keeps its raw arguments (``ctx.meta["raw_args"]``), so that the values of
    two repeatable options can be put back in the order they were typed."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["raw_args"] = list(args)
        return super().parse_args(ctx, args)


@bench_app.command("speed", cls=_KeepArgsCommand)
def bench_speed(
    ctx: typer.Context,
    preset: Annotated[
        list[str] | None,
        typer.Option("--preset", metavar="NAME", help="Model preset to measure (repeatable)."),
    ] = None,
    config: Annotated[
        list[Path] | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="Run file (its model: section) or bare model config to measure (repeatable).",
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="FIELD=VALUE", help="Protocol field, e.g. seq_len=128 (repeatable)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Training, forward and generation throughput of one or more models, side by side in one
    process: interleaved round-robin over the models, median of warm calls, ratios to the first
    model (in command-line order; default: --preset gpt-small-cpu). Protocol fields for --set:
    batch_size seq_len warmup train_repeats fwd_warmup fwd_repeats gen_warmup gen_repeats
    prompt_len new_tokens lr seed compile.

    Example: formerlab bench speed --preset gpt-small-cpu --config configs/examples/copy-tiny.yaml --json
    """
    from .bench.speed import display_rows, order_specs, protocol_from, speed_compare

    proto = protocol_from({"threads": threads}, settings or [])
    raw = ctx.meta.get("raw_args", [])
    specs = order_specs(raw, preset or [], config or []) or order_specs([], ["gpt-small-cpu"], [])
    result = speed_compare(specs, **proto.to_dict())
    if as_json:
        print(json.dumps(result))
        return
    title = f"speed ({result['threads']} threads; ratios to {result['reference']})"
    console.print(_table(title, display_rows(result)))


@bench_app.command("attention")
def bench_attention(
    kinds: Annotated[
        str | None, typer.Option(help="Comma-separated attention kinds [default: all registered].")
    ] = None,
    lengths: Annotated[
        str, typer.Option(help="Comma-separated sequence lengths.")
    ] = "512,1024,2048,4096,8192,16384",
    causal: Annotated[
        bool, typer.Option("--causal", help="Causal attention (kinds without it are skipped).")
    ] = False,
    repeats: Annotated[int, typer.Option(help="Timed forward+backward calls (median).")] = 3,
    timeout_s: Annotated[
        float,
        typer.Option("--timeout-s", help="Seconds one call may take before a kind stops growing."),
    ] = 60.0,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
    plot: Annotated[
        Path | None, typer.Option(help="Write a log-log plot here (.png, .svg or .pdf).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line.")] = False,
) -> None:
    """Forward+backward time and peak memory of attention kinds over sequence length (batch 1,
    dim 256, 4 heads, float32; median of warm runs), with fitted scaling exponents.

    Example: formerlab bench attention --kinds softmax,local --lengths 1024,2048,4096 --json
    """
    from .bench.attention import attention_benchmark, parse_ints, parse_names, summary_rows

    options = {"lengths": parse_ints(lengths, "--lengths"), "causal": causal, "repeats": repeats}
    if kinds is not None:
        options["kinds"] = parse_names(kinds, "--kinds")
    progress = Console(stderr=True)

    def log(line: str) -> None:
        progress.print(line, markup=False, highlight=False)

    result = attention_benchmark(
        plot=plot, log=log, timeout_s=timeout_s, threads=threads, **options
    )
    if as_json:
        print(json.dumps(result))
        return
    title = f"attention fwd+bwd time / peak memory; exponents over {result['fit_range']} tokens"
    console.print(_table(title, summary_rows(result)))


# -- compare ------------------------------------------------------------------------------------


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="The base run file (model, task, train).")],
    variants: Annotated[
        list[Path] | None,
        typer.Option("--variants", help="YAML files, each holding what differs from the base."),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(help="One field over values, e.g. model.attention.kind=softmax,local."),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per variant (0..N-1).")] = 3,
    steps: Annotated[
        int | None, typer.Option(help="Training steps for every run (same as --budget N).")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            metavar="N|Nsteps|Ns|Nmin",
            help="Per run (variant x seed): optimizer steps (300, 300steps) or wall-clock "
            "training time (90s, 2min; train.steps stays the cap and schedule horizon).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default runs/compare/<config>).")
    ] = None,
) -> None:
    """Train variants of one run under the same budget and seeds; print the table (with the steps
    each reached), write report.html. A time budget is not bit-reproducible.

    Example: formerlab compare configs/examples/copy-tiny.yaml --sweep model.norm.kind=layernorm,rmsnorm --seeds 2 --budget 30s
    """
    from .compare import choose_budget
    from .compare import compare as run_compare

    out = out or Path("runs") / "compare" / config.stem
    rows = run_compare(
        config,
        out,
        variants=variants or [],
        sweep=sweep,
        seeds=seeds,
        steps=steps,
        budget=budget,
        log=console.print,
    )
    from .report.compare import display_rows

    title = f"compare {config} ({choose_budget(steps, budget).describe()})"
    console.print(_table(title, display_rows(rows)))
    console.print(f"report: {out / 'report.html'}")


# -- demo ---------------------------------------------------------------------------------------


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/demo"),
    steps: Annotated[
        int | None, typer.Option(help="Override the number of training steps.")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Delete an earlier demo run first.")] = True,
) -> None:
    """Train a small code LM on the Python standard library, evaluate it, sample from it and write
    runs/demo/report.html.

    Example: formerlab demo --steps 100
    """
    from .demo import run_demo

    run_demo(out, steps=steps, fresh=fresh, console=console)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one-line errors, exit code 2 (130 on Ctrl-C)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args, standalone_mode=False)
    except FormerlabError as exc:
        if "--debug" in args:
            raise
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
