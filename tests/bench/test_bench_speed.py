"""The speed benchmark at tiny sizes: figures present, positive and finite (never timed)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from formerlab.bench import SpeedProtocol, run_protocol, speed_benchmark, time_median
from formerlab.bench import speed as speed_mod
from formerlab.errors import ConfigError, FormerlabError

TINY = {
    "batch_size": 2,
    "seq_len": 16,
    "warmup": 1,
    "train_repeats": 2,
    "fwd_warmup": 0,
    "fwd_repeats": 2,
    "gen_repeats": 2,
    "prompt_len": 4,
    "new_tokens": 5,
}
SPEEDS = ("train_tokens_per_s", "fwd_tokens_per_s", "gen_tokens_per_s")


def test_speed_benchmark_figures():
    before = torch.get_num_threads()
    figures = speed_benchmark("gpt-tiny", threads=1, **TINY)
    assert set(figures) >= {*SPEEDS, "peak_rss_mb", "params", "threads", "torch", "preset"}
    for key in (*SPEEDS, "peak_rss_mb"):
        assert figures[key] > 0 and math.isfinite(figures[key]), key
    assert figures["threads"] == 1 and torch.get_num_threads() == before
    assert figures["preset"] == "gpt-tiny"
    assert figures["torch"] == torch.__version__
    assert figures["params"] == sum(p.numel() for p in _gpt_tiny().parameters())
    json.loads(json.dumps(figures))  # one JSON line when printed


def test_prompt_longer_than_training_sequences():
    figures = speed_benchmark("gpt-tiny", **{**TINY, "seq_len": 4, "prompt_len": 12})
    assert figures["prompt_len"] == 12 and figures["gen_tokens_per_s"] > 0


def test_speed_benchmark_accepts_a_config_dict():
    from formerlab.models import preset_dict

    cfg = {**preset_dict("gpt-tiny"), "depth": 1}
    figures = speed_benchmark(cfg, **TINY)
    assert figures["preset"] is None
    assert figures["params"] < sum(p.numel() for p in _gpt_tiny().parameters())


def _gpt_tiny():
    from formerlab import build_model

    return build_model("gpt-tiny")


# -- the shared timing helper and protocol ------------------------------------------------------


def test_time_median_counts_calls_and_takes_the_median(monkeypatch):
    durations = iter([7, 3, 1, 2])  # the warm-up call's 7 must not count
    now = {"t": 0.0}

    def fake_perf_counter():
        return now["t"]

    def fn():
        now["t"] += next(durations)

    monkeypatch.setattr(speed_mod.time, "perf_counter", fake_perf_counter)
    assert time_median(fn, warmup=1, repeats=3) == 2


class _Bigram(nn.Module):
    """A tiny stand-in model that records how often each path runs."""

    def __init__(self, vocab=11, new_tokens=5):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        self.calls = {"forward": 0, "generate": 0}
        self.new_tokens = new_tokens

    def forward(self, ids):
        self.calls["forward"] += 1
        return self.table(ids)

    def generate(self, prompt):
        self.calls["generate"] += 1
        return torch.cat([prompt, prompt.new_zeros(1, self.new_tokens)], dim=1)


def test_run_protocol_calls_and_trains():
    model = _Bigram()
    before = model.table.weight.detach().clone()
    proto = SpeedProtocol.from_dict({**TINY, "gen_warmup": 1})
    figures = run_protocol(model, model, model.generate, 11, proto)
    fwd = TINY["fwd_warmup"] + TINY["fwd_repeats"]
    train = TINY["warmup"] + TINY["train_repeats"]
    assert model.calls == {"forward": fwd + train, "generate": 1 + 1 + TINY["gen_repeats"]}
    assert not torch.equal(model.table.weight, before)  # AdamW really stepped
    assert figures["params"] == 11 * 11
    assert all(figures[k] > 0 and math.isfinite(figures[k]) for k in SPEEDS)


def test_run_protocol_rejects_short_generation():
    model = _Bigram(new_tokens=3)
    with pytest.raises(
        FormerlabError, match=r"generate returned shape \(1, 7\), expected \(1, 9\)"
    ):
        run_protocol(model, model, model.generate, 11, SpeedProtocol.from_dict(TINY))


# -- validation before compute ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        ("gpt-tiny", {"seq_len": 129}, r"bench.seq_len: invalid value 129; allowed: <= .*128"),
        ("gpt-tiny", {"prompt_len": 100, "new_tokens": 29}, "bench.new_tokens: prompt_len 100"),
        ("gpt-tiny", {"warmup": -1}, "bench.warmup: invalid value -1; allowed: >= 0"),
        ("gpt-tiny", {"train_repeats": 0}, "bench.train_repeats: invalid value 0"),
        ("gpt-tiny", {"lr": 0.0}, "bench.lr: invalid value 0.0"),
        ("gpt-tiny", {"repeats": 3}, "bench.repeats: unknown field.*valid fields: batch_size"),
        ("bert-small-cpu", {}, "model.kind: invalid value 'encoder'.*allowed: decoder_lm"),
        ("no-such-preset", {}, "unknown preset 'no-such-preset'"),
    ],
)
def test_bad_arguments(model, kwargs, match, monkeypatch):
    ran = []
    monkeypatch.setattr(speed_mod, "run_protocol", lambda *a, **k: ran.append(1))
    with pytest.raises(ConfigError, match=match):
        speed_benchmark(model, **{**TINY, **kwargs})
    assert not ran
