"""Speed benchmark of models on this machine's CPU (``formerlab bench speed``).

Any number of models are measured side by side in one process, interleaved so that drift (clock
boosts, other processes, allocator warm-up) hits every model alike:

1. Every model is built, then generates once untimed (the output length is checked).
2. Warm-up rounds, round-robin over the models: ``fwd_warmup`` forwards, ``gen_warmup`` extra
   generate calls and ``warmup`` training steps per model.
3. Timed rounds, round-robin over the models; in each round a model runs (at most) one timed
   forward, one generate call and one training step. A phase with fewer repeats than there are
   rounds is spread evenly over them. Each figure is the median of its timed calls.

The figures (issue 2 §9; the protocol shared with ``benchmarks/hf_gpt2_speed.py`` through
:func:`run_protocol`, so every model is timed by exactly this code):

- ``fwd_tokens_per_s``: inference forward of a ``batch_size × seq_len`` batch under
  ``torch.inference_mode``.
- ``gen_tokens_per_s``: greedy decoding of ``new_tokens`` tokens from one ``prompt_len``-token prompt
  (batch 1) through the model's own ``generate`` with its KV cache (decoder LMs; an encoder-decoder
  decodes ``new_tokens`` targets from a ``prompt_len``-token source); ``None`` for an encoder.
- ``train_tokens_per_s``: forward + cross-entropy against fixed random targets (+ the auxiliary
  losses layers record, :mod:`formerlab.layers.aux`) + backward + AdamW step (+ zero_grad) on a ``batch_size × seq_len`` batch. An encoder-decoder gets the batch as both
  source and target; its tokens are counted once (``batch_size × seq_len``).
- ``rel_iqr`` (per model and phase): the interquartile range of the timed calls over their median;
  a ratio between two models smaller than this noise says little.
- ``peak_rss_mb``: the process's peak resident memory so far; with several models in one process it
  covers all of them, so it is reported once, not per model.

Inputs are random token ids from a fixed seed; timing is wall clock (``time.perf_counter``) with
``threads`` torch threads. Numbers are printed, never asserted on.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import BaseConfig, apply_overrides, join, load_with_base, param
from ..errors import ConfigError, FormerlabError
from ..layers.aux import collect_aux, parameter_counts
from ..threads import torch_threads

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, T) ids -> output (logits)
Generate = Callable[[torch.Tensor], torch.Tensor]  # (1, P) prompt -> (1, ...) ids
SPEEDS = ("train_tokens_per_s", "fwd_tokens_per_s", "gen_tokens_per_s")


@dataclass(kw_only=True)
class SpeedProtocol(BaseConfig):
    """What the speed benchmark measures; the defaults are the published protocol."""

    batch_size: int = param(16, doc="sequences per training / forward batch")
    seq_len: int = param(256, doc="tokens per sequence")
    threads: int = param(2, doc="torch CPU threads")
    warmup: int = param(5, doc="untimed training steps before timing")
    train_repeats: int = param(20, doc="timed training steps (median)")
    fwd_warmup: int = param(2, doc="untimed forward passes before timing")
    fwd_repeats: int = param(20, doc="timed forward passes (median)")
    gen_warmup: int = param(
        0, doc="extra untimed generate calls (one untimed call that checks the output always runs)"
    )
    gen_repeats: int = param(5, doc="timed generate calls (median)")
    prompt_len: int = param(32, doc="prompt tokens for generation")
    new_tokens: int = param(128, doc="tokens generated per call")
    lr: float = param(1.0e-4, doc="AdamW learning rate of the timed training steps")
    compile: bool = param(
        False,
        doc="decoder LMs generate with compile=True (fixed buffers, one compiled step; the "
        "untimed first call compiles it)",
    )
    seed: int = param(0, doc="seed for weights and input ids")

    def validate(self, path: str = "") -> None:
        positive = ("batch_size", "seq_len", "threads", "train_repeats", "fwd_repeats")
        for name in (*positive, "gen_repeats", "prompt_len", "new_tokens"):
            _at_least(self, name, 1, path)
        for name in ("warmup", "fwd_warmup", "gen_warmup"):
            _at_least(self, name, 0, path)
        if not self.lr > 0:
            raise ConfigError(f"{join(path, 'lr')}: invalid value {self.lr!r}; allowed: > 0")

    def check_fits(
        self, max_seq_len: int, path: str = "bench", *, kind: str = "decoder_lm"
    ) -> None:
        """ConfigError if the sequences do not fit a model of ``kind`` with ``max_seq_len``
        positions (a decoder LM holds prompt + new tokens; an encoder-decoder's target holds BOS +
        new tokens and its source the prompt; an encoder only the training sequences)."""
        _fits(path, "seq_len", self.seq_len, max_seq_len)
        if kind == "decoder_lm" and self.prompt_len + self.new_tokens > max_seq_len:
            raise ConfigError(
                f"{join(path, 'new_tokens')}: prompt_len {self.prompt_len} + new_tokens "
                f"{self.new_tokens} exceeds the model's max_seq_len; allowed: a sum <= {max_seq_len}"
            )
        if kind == "encoder_decoder":
            _fits(path, "prompt_len", self.prompt_len, max_seq_len)
            _fits(path, "new_tokens", self.new_tokens, max_seq_len - 1, " - 1 for BOS")


def _at_least(cfg: SpeedProtocol, name: str, low: int, path: str) -> None:
    value = getattr(cfg, name)
    if value < low:
        raise ConfigError(f"{join(path, name)}: invalid value {value!r}; allowed: >= {low}")


def _fits(path: str, name: str, value: int, limit: int, note: str = "") -> None:
    if value > limit:
        raise ConfigError(
            f"{join(path, name)}: invalid value {value}; "
            f"allowed: <= the model's max_seq_len{note} ({limit})"
        )


# -- timing helpers -----------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn`` in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_median(fn: Callable[[], Any], *, warmup: int, repeats: int) -> float:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times; the median wall time in s."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(repeats))


def spaced_rounds(n: int, rounds: int) -> set[int]:
    """``n`` round indices out of ``range(rounds)``, evenly spaced (all of them when n >= rounds)."""
    return {i * rounds // n for i in range(n)} if n < rounds else set(range(rounds))


# -- the interleaved protocol -------------------------------------------------------------------


@dataclass
class Subject:
    """One model under measurement and how to drive it.

    ``generate`` is ``None`` for a model that does not generate; ``gen_shape`` is the shape its
    output must have for a ``(1, prompt_len)`` prompt.
    """

    name: str
    model: nn.Module
    forward: Forward
    generate: Generate | None
    vocab_size: int
    gen_shape: tuple[int, int] = (0, 0)
    times: dict[str, list[float]] = field(default_factory=dict)


class _Runner:
    """The inputs, optimizer and phase calls of one subject."""

    def __init__(self, subject: Subject, proto: SpeedProtocol) -> None:
        self.s, self.proto = subject, proto
        torch.manual_seed(proto.seed)  # the same inputs for every model of the same vocabulary
        self.ids = torch.randint(subject.vocab_size, (proto.batch_size, proto.seq_len))
        self.prompt = torch.randint(subject.vocab_size, (1, proto.prompt_len))
        self.targets: torch.Tensor | None = None
        self.optimizer = torch.optim.AdamW(subject.model.parameters(), lr=proto.lr, fused=True)
        subject.times = {"fwd": [], "gen": [], "train": []}

    def fwd(self) -> None:
        self.s.model.eval()
        with torch.inference_mode():
            self.s.forward(self.ids)

    def gen(self) -> torch.Tensor:
        self.s.model.eval()
        return self.s.generate(self.prompt)

    def train(self) -> None:
        self.s.model.train()
        out = self.s.forward(self.ids)
        if self.targets is None:  # fixed random targets shaped like the output (any head)
            generator = torch.Generator().manual_seed(self.proto.seed)
            self.targets = torch.randint(out.size(-1), out.shape[:-1], generator=generator)
        loss = nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), self.targets.reshape(-1))
        aux, _ = collect_aux(self.s.model)  # e.g. a MoE load-balancing loss, as the trainer does
        (loss if aux is None else loss + aux).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def check_generate(self) -> None:
        if self.s.generate is None:
            return
        shape = tuple(self.gen().shape)
        if shape != tuple(self.s.gen_shape):
            raise FormerlabError(
                f"bench: {self.s.name}: generate returned shape {shape}, expected "
                f"{tuple(self.s.gen_shape)}; the benchmark needs exactly new_tokens tokens per call"
            )

    def phases(self) -> list[tuple[str, Callable[[], Any]]]:
        gen = [("gen", self.gen)] if self.s.generate is not None else []
        return [("fwd", self.fwd), *gen, ("train", self.train)]


def measure(subjects: Sequence[Subject], proto: SpeedProtocol) -> list[dict[str, float | None]]:
    """Time every subject with ``proto``, interleaved round-robin; per subject its tokens/s."""
    p = proto
    with torch_threads(p.threads), torch.random.fork_rng(devices=[]):
        runners = [_Runner(s, p) for s in subjects]
        for runner in runners:
            runner.check_generate()
        counts = {"fwd": (p.fwd_warmup, p.fwd_repeats), "gen": (p.gen_warmup, p.gen_repeats)}
        counts["train"] = (p.warmup, p.train_repeats)
        for r in range(max(w for w, _ in counts.values())):
            for runner in runners:
                for phase, call in runner.phases():
                    if r < counts[phase][0]:
                        call()
        rounds = max(n for _, n in counts.values())
        when = {phase: spaced_rounds(n, rounds) for phase, (_, n) in counts.items()}
        for r in range(rounds):
            for runner in runners:
                for phase, call in runner.phases():
                    if r in when[phase]:
                        runner.s.times[phase].append(timed(call))
    return [_figures(s, p) for s in subjects]


def _figures(subject: Subject, proto: SpeedProtocol) -> dict[str, float | None]:
    tokens = proto.batch_size * proto.seq_len
    t = {phase: statistics.median(v) if v else None for phase, v in subject.times.items()}
    return {
        "train_tokens_per_s": tokens / t["train"],
        "fwd_tokens_per_s": tokens / t["fwd"],
        "gen_tokens_per_s": proto.new_tokens / t["gen"] if t["gen"] is not None else None,
    }


def machine_facts() -> dict[str, Any]:
    """What a reader needs to compare figures across machines."""
    return {
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run_protocol(
    model: nn.Module, forward: Forward, generate: Generate, vocab_size: int, proto: SpeedProtocol
) -> dict[str, Any]:
    """Measure one decoder ``model`` (through ``forward`` and ``generate``); the figures dict."""
    shape = (1, proto.prompt_len + proto.new_tokens)
    (figures,) = measure([Subject("model", model, forward, generate, vocab_size, shape)], proto)
    with torch_threads(proto.threads):
        facts = machine_facts()
    return {
        **figures,
        "peak_rss_mb": peak_rss_mb(),
        "params": count_params(model),
        "threads": facts["threads"],
        "torch": facts["torch"],
        "python": facts["python"],
        "batch_size": proto.batch_size,
        "seq_len": proto.seq_len,
        "prompt_len": proto.prompt_len,
        "new_tokens": proto.new_tokens,
    }


# -- formerlab models ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model to measure: its display name, where it came from, and its validated config."""

    name: str
    source: str
    config: Any  # ModelConfig


def _decoder_subject(name: str, model: nn.Module, proto: SpeedProtocol) -> Subject:
    def generate(prompt: torch.Tensor) -> torch.Tensor:
        return model.generate(
            prompt, max_new_tokens=proto.new_tokens, temperature=0.0, compile=proto.compile
        )

    shape = (1, proto.prompt_len + proto.new_tokens)
    return Subject(name, model, model, generate, model.config.vocab_size, shape)


def _encoder_subject(name: str, model: nn.Module, proto: SpeedProtocol) -> Subject:
    return Subject(name, model, model, None, model.config.vocab_size)


def _seq2seq_subject(name: str, model: nn.Module, proto: SpeedProtocol) -> Subject:
    def generate(src: torch.Tensor) -> torch.Tensor:
        return model.generate(src, max_new_tokens=proto.new_tokens, temperature=0.0)

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return model(ids, ids)

    shape = (1, 1 + proto.new_tokens)
    return Subject(name, model, forward, generate, model.config.vocab_size, shape)


#: model kind -> how the benchmark drives it
DRIVERS: dict[str, Callable[[str, nn.Module, SpeedProtocol], Subject]] = {
    "decoder_lm": _decoder_subject,
    "encoder": _encoder_subject,
    "encoder_decoder": _seq2seq_subject,
}


def preset_spec(name: str) -> ModelSpec:
    """A preset as a model to measure (ConfigError for an unknown preset)."""
    from ..models import ModelConfig, preset_dict

    return ModelSpec(name, f"preset {name}", ModelConfig.from_dict(preset_dict(name), "model"))


def config_spec(path: str | Path) -> ModelSpec:
    """A model from a YAML/JSON file: a run file's ``model:`` section, or a bare model config
    (``kind: decoder_lm ...``; ``base:`` and ``preset:`` work as in run files)."""
    from ..models import ModelConfig
    from ..run_config import resolve_presets

    path = Path(path)
    data = load_with_base(path)
    if "model" in data and "kind" not in data:
        data = {"model": data["model"]}
    else:
        data = {"model": data}
    try:
        cfg = ModelConfig.from_dict(resolve_presets(data)["model"], "model")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return ModelSpec(path.stem, str(path), cfg)


def _unique_names(specs: Sequence[ModelSpec]) -> list[str]:
    """The specs' names, a repeated one numbered (``gpt-tiny``, ``gpt-tiny#2``)."""
    seen: dict[str, int] = {}
    names = []
    for spec in specs:
        seen[spec.name] = seen.get(spec.name, 0) + 1
        names.append(spec.name if seen[spec.name] == 1 else f"{spec.name}#{seen[spec.name]}")
    return names


def check_specs(specs: Sequence[ModelSpec], proto: SpeedProtocol) -> None:
    """ConfigError naming the model for an unsupported kind or sequences that do not fit."""
    if not specs:
        raise ConfigError("bench: no model to measure; give --preset NAME or --config FILE")
    for spec in specs:
        kind = spec.config.kind
        if kind not in DRIVERS:
            raise ConfigError(
                f"{spec.name}: model.kind: invalid value {kind!r} for the speed benchmark; "
                f"allowed: {', '.join(DRIVERS)}"
            )
        try:
            proto.check_fits(spec.config.max_seq_len, kind=kind)
        except ConfigError as exc:
            raise ConfigError(f"{spec.name}: {exc}") from None


def protocol_from(protocol: dict[str, Any] | None = None, overrides: Sequence[str] = ()):
    """A validated :class:`SpeedProtocol` from keyword fields and ``field=value`` overrides."""
    return SpeedProtocol.from_dict(apply_overrides(dict(protocol or {}), overrides), "bench")


def speed_compare(models: Sequence[ModelSpec | str], **protocol: Any) -> dict[str, Any]:
    """Measure several models side by side, interleaved, in this process; one JSON-ready object.

    ``models`` are :class:`ModelSpec` (see :func:`preset_spec`, :func:`config_spec`) or preset
    names; keyword arguments are :class:`SpeedProtocol` fields. Everything is validated before any
    model is built. ``ratio`` of each model is its figure over the first model's.
    """
    from ..models import build_model

    proto = protocol_from(protocol)
    specs = [preset_spec(m) if isinstance(m, str) else m for m in models]
    check_specs(specs, proto)
    subjects = []
    with torch.random.fork_rng(devices=[]):
        for name, spec in zip(_unique_names(specs), specs, strict=True):
            torch.manual_seed(proto.seed)
            model = build_model(spec.config)
            subjects.append(DRIVERS[spec.config.kind](name, model, proto))
    figures = measure(subjects, proto)
    rows = [
        _model_row(spec, subject, fig)
        for spec, subject, fig in zip(specs, subjects, figures, strict=True)
    ]
    for row in rows:
        row["ratio"] = {k: _ratio(row[k], rows[0][k]) for k in SPEEDS}
    with torch_threads(proto.threads):
        facts = machine_facts()
    return {
        "reference": rows[0]["name"],
        "models": rows,
        "peak_rss_mb": peak_rss_mb(),
        **facts,
        "protocol": proto.to_dict(),
    }


def _model_row(spec: ModelSpec, subject: Subject, fig: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": subject.name,
        "source": spec.source,
        "kind": spec.config.kind,
        "params": count_params(subject.model),
        "active_params": active_params(subject.model),
        **fig,
        "rel_iqr": {phase: relative_iqr(times) for phase, times in subject.times.items()},
    }


def relative_iqr(times: Sequence[float]) -> float | None:
    """Interquartile range of the timed calls over their median (how noisy a figure is)."""
    if len(times) < 2:
        return None
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(times)


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value / reference


def order_specs(raw_args: Sequence[str], presets: Sequence[str], configs: Sequence[str | Path]):
    """``--preset`` and ``--config`` values as one list in command-line order (the first is the
    reference of the ratios); ``raw_args`` are the command's own arguments as typed."""
    flags = []
    args = iter(raw_args)
    for arg in args:
        if arg == "--":
            break
        for flag in ("preset", "config"):
            if arg == f"--{flag}" or arg.startswith(f"--{flag}="):
                flags.append(flag)
                if arg == f"--{flag}":
                    next(args, None)  # its value, whatever it looks like
    if flags.count("preset") != len(presets) or flags.count("config") != len(configs):
        flags = ["preset"] * len(presets) + ["config"] * len(configs)  # order not recoverable
    values = {"preset": iter(presets), "config": iter(configs)}
    return [
        preset_spec(next(values[f])) if f == "preset" else config_spec(next(values[f]))
        for f in flags
    ]


def display_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparison as people read it: one row per model, each speed with its ratio."""
    rows = []
    for m in result["models"]:
        row = {"model": m["name"], "kind": m["kind"], "params": m["params"]}
        if any(x["active_params"] is not None for x in result["models"]):
            row["active params"] = m["active_params"]
        for key, label in zip(SPEEDS, ("train", "forward", "generate"), strict=True):
            value, ratio = m[key], m["ratio"][key]
            shown = "-" if value is None else f"{value:,.0f}"
            row[f"{label} tok/s"] = shown if ratio is None else f"{shown} ({ratio:.2f}x)"
        rows.append(row)
    return rows


def speed_benchmark(model_cfg_or_preset: Any, **protocol: Any) -> dict[str, Any]:
    """Benchmark one formerlab model given as a preset name, config dict or ModelConfig.

    Keyword arguments are :class:`SpeedProtocol` fields (``batch_size=16, seq_len=256, threads=2,
    warmup=5, train_repeats=20, fwd_repeats=20, gen_repeats=5, prompt_len=32, new_tokens=128``, ...);
    all are validated, against the model's ``max_seq_len`` too, before any compute. The flat
    figures dict of :func:`run_protocol`, with ``preset`` (or ``None``).
    """
    from ..models import ModelConfig

    preset = model_cfg_or_preset if isinstance(model_cfg_or_preset, str) else None
    if preset is not None:
        spec = preset_spec(preset)
    else:
        spec = ModelSpec("model", "config", ModelConfig.from_dict(model_cfg_or_preset, "model"))
    result = speed_compare([spec], **protocol)
    (row,) = result["models"]
    proto = result["protocol"]
    return {
        **{k: row[k] for k in SPEEDS},
        "peak_rss_mb": result["peak_rss_mb"],
        "params": row["params"],
        "active_params": row["active_params"],
        "kind": row["kind"],
        "threads": result["threads"],
        "torch": result["torch"],
        "python": result["python"],
        **{k: proto[k] for k in ("batch_size", "seq_len", "prompt_len", "new_tokens")},
        "preset": preset,
    }


# -- machine facts ------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def active_params(model: nn.Module) -> int | None:
    """Parameters one token goes through, when a part says it skips some (a mixture-of-experts FFN
    reports ``inactive_params()``; :func:`formerlab.layers.aux.parameter_counts`), else ``None``:
    in a dense model every parameter is active."""
    if not any(callable(getattr(m, "inactive_params", None)) for m in model.modules()):
        return None
    return parameter_counts(model)["active"]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    )  # bytes on macOS, KiB on Linux
