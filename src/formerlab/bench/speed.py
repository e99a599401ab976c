"""Speed benchmark of a decoder LM on this machine's CPU (``formerlab bench speed``).

The protocol (issue 2 §9), shared with ``benchmarks/hf_gpt2_speed.py`` so that any model measured
through :func:`run_protocol` is timed by exactly the same code:

- ``fwd_tokens_per_s``: inference forward of a ``batch_size × seq_len`` batch under
  ``torch.inference_mode``; median of ``fwd_repeats`` after ``fwd_warmup`` untimed calls.
- ``gen_tokens_per_s``: greedy decoding of ``new_tokens`` tokens from one ``prompt_len``-token prompt
  (batch 1) through the model's own ``generate`` with its KV cache; one untimed call (which also
  checks that exactly ``new_tokens`` tokens come out), then the median of ``gen_repeats``.
- ``train_tokens_per_s``: forward + cross-entropy + backward + AdamW step (+ zero_grad) on a
  ``batch_size × seq_len`` batch; ``warmup`` untimed steps, then the median of ``train_repeats``.
- ``peak_rss_mb``: the process's peak resident memory so far (in a script that measures several
  models one after another, it includes everything measured before).

Inputs are random token ids from a fixed seed; timing is wall clock (``time.perf_counter``) with
``threads`` torch threads. Numbers are printed, never asserted on.
"""

from __future__ import annotations

import contextlib
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import BaseConfig, join, param
from ..errors import ConfigError, FormerlabError

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, T) ids -> (B, T, V) logits
Generate = Callable[[torch.Tensor], torch.Tensor]  # (1, P) prompt -> (1, P + new) ids


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
    seed: int = param(0, doc="seed for weights and input ids")

    def validate(self, path: str = "") -> None:
        positive = ("batch_size", "seq_len", "threads", "train_repeats", "fwd_repeats")
        for name in (*positive, "gen_repeats", "prompt_len", "new_tokens"):
            _at_least(self, name, 1, path)
        for name in ("warmup", "fwd_warmup", "gen_warmup"):
            _at_least(self, name, 0, path)
        if not self.lr > 0:
            raise ConfigError(f"{join(path, 'lr')}: invalid value {self.lr!r}; allowed: > 0")

    def check_fits(self, max_seq_len: int, path: str = "bench") -> None:
        """ConfigError if the sequences do not fit a model with ``max_seq_len`` positions."""
        if self.seq_len > max_seq_len:
            raise ConfigError(
                f"{join(path, 'seq_len')}: invalid value {self.seq_len}; "
                f"allowed: <= the model's max_seq_len ({max_seq_len})"
            )
        if self.prompt_len + self.new_tokens > max_seq_len:
            raise ConfigError(
                f"{join(path, 'new_tokens')}: prompt_len {self.prompt_len} + new_tokens "
                f"{self.new_tokens} exceeds the model's max_seq_len; allowed: a sum <= {max_seq_len}"
            )


def _at_least(cfg: SpeedProtocol, name: str, low: int, path: str) -> None:
    value = getattr(cfg, name)
    if value < low:
        raise ConfigError(f"{join(path, name)}: invalid value {value!r}; allowed: >= {low}")


# -- the one timing helper ----------------------------------------------------------------------


def time_median(fn: Callable[[], Any], *, warmup: int, repeats: int) -> float:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times; the median wall time in s."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- the protocol -------------------------------------------------------------------------------


def run_protocol(
    model: nn.Module, forward: Forward, generate: Generate, vocab_size: int, proto: SpeedProtocol
) -> dict[str, Any]:
    """Measure ``model`` (through ``forward`` and ``generate``) with ``proto``; the figures dict."""
    with torch_threads(proto.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(proto.seed)
        ids = torch.randint(vocab_size, (proto.batch_size, proto.seq_len + 1))
        prompt = torch.randint(vocab_size, (1, proto.prompt_len))
        tokens = proto.batch_size * proto.seq_len
        fwd_s = _forward_seconds(model, forward, ids[:, :-1], proto)
        gen_s = _generate_seconds(model, generate, prompt, proto)
        train_s = _train_seconds(model, forward, ids, proto)
        threads = torch.get_num_threads()
    return {
        "train_tokens_per_s": tokens / train_s,
        "fwd_tokens_per_s": tokens / fwd_s,
        "gen_tokens_per_s": proto.new_tokens / gen_s,
        "peak_rss_mb": peak_rss_mb(),
        "params": count_params(model),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch_size": proto.batch_size,
        "seq_len": proto.seq_len,
        "prompt_len": proto.prompt_len,
        "new_tokens": proto.new_tokens,
    }


def _forward_seconds(model: nn.Module, forward: Forward, ids: torch.Tensor, proto) -> float:
    model.eval()

    def call() -> None:
        with torch.inference_mode():
            forward(ids)

    return time_median(call, warmup=proto.fwd_warmup, repeats=proto.fwd_repeats)


def _generate_seconds(model: nn.Module, generate: Generate, prompt: torch.Tensor, proto) -> float:
    model.eval()
    expected = (1, proto.prompt_len + proto.new_tokens)
    out = generate(prompt)
    if tuple(out.shape) != expected:
        raise FormerlabError(
            f"bench: generate returned shape {tuple(out.shape)}, expected {expected}; "
            "the benchmark needs exactly new_tokens tokens per call"
        )
    return time_median(lambda: generate(prompt), warmup=proto.gen_warmup, repeats=proto.gen_repeats)


def _train_seconds(model: nn.Module, forward: Forward, ids: torch.Tensor, proto) -> float:
    model.train()
    inputs, targets = ids[:, :-1], ids[:, 1:].reshape(-1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=proto.lr, fused=True)

    def step() -> None:
        logits = forward(inputs)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_median(step, warmup=proto.warmup, repeats=proto.train_repeats)


# -- formerlab models ---------------------------------------------------------------------------


def speed_benchmark(model_cfg_or_preset: Any, **protocol: Any) -> dict[str, Any]:
    """Benchmark a formerlab decoder LM given as a preset name, config dict or ModelConfig.

    Keyword arguments are :class:`SpeedProtocol` fields (``batch_size=16, seq_len=256, threads=2,
    warmup=5, train_repeats=20, fwd_repeats=20, gen_repeats=5, prompt_len=32, new_tokens=128``, ...);
    all are validated, against the model's ``max_seq_len`` too, before any compute.
    """
    from ..models import build_model

    proto = SpeedProtocol.from_dict(protocol, "bench")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(proto.seed)
        model = build_model(model_cfg_or_preset)
    _check_generates(model)
    proto.check_fits(model.config.max_seq_len)

    def generate(prompt: torch.Tensor) -> torch.Tensor:
        return model.generate(prompt, max_new_tokens=proto.new_tokens, temperature=0.0)

    figures = run_protocol(model, model, generate, model.config.vocab_size, proto)
    preset = model_cfg_or_preset if isinstance(model_cfg_or_preset, str) else None
    return {**figures, "preset": preset}


def _check_generates(model: nn.Module) -> None:
    if not callable(getattr(model, "generate", None)) or model.config.kind != "decoder_lm":
        raise ConfigError(
            f"model.kind: invalid value {model.config.kind!r} for the speed benchmark; "
            "allowed: decoder_lm"
        )


# -- machine facts ------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    )  # bytes on macOS, KiB on Linux


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads, restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
