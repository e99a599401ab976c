"""The speed benchmark at tiny sizes: figures present, positive and finite, several models
interleaved in one run, ratios, validation before compute (never timed)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn

from formerlab.bench import SpeedProtocol, run_protocol, speed_benchmark, time_median
from formerlab.bench import speed as speed_mod
from formerlab.bench.speed import SPEEDS, config_spec, speed_compare
from formerlab.errors import ConfigError, FormerlabError
from formerlab.models import ModelConfig, preset_dict

TINY = {
    "threads": 1,  # no oversubscription when other tests load the machine
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


def test_speed_benchmark_figures():
    before = torch.get_num_threads()
    figures = speed_benchmark("gpt-tiny", **TINY)
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


@pytest.fixture
def no_compute(monkeypatch):
    """Record any model build or measurement (neither may happen before the errors)."""
    import formerlab.models

    ran = []
    monkeypatch.setattr(speed_mod, "measure", lambda *a, **k: ran.append("measure"))
    monkeypatch.setattr(formerlab.models, "build_model", lambda *a, **k: ran.append("build"))
    return ran


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        ("gpt-tiny", {"seq_len": 129}, r"bench.seq_len: invalid value 129; allowed: <= .*128"),
        ("gpt-tiny", {"prompt_len": 100, "new_tokens": 29}, "bench.new_tokens: prompt_len 100"),
        ("gpt-tiny", {"warmup": -1}, "bench.warmup: invalid value -1; allowed: >= 0"),
        ("gpt-tiny", {"train_repeats": 0}, "bench.train_repeats: invalid value 0"),
        ("gpt-tiny", {"lr": 0.0}, "bench.lr: invalid value 0.0"),
        ("gpt-tiny", {"repeats": 3}, "bench.repeats: unknown field.*valid fields: batch_size"),
        ("t5-small-cpu", {"new_tokens": 256}, r"bench.new_tokens: invalid value 256.*BOS \(255\)"),
        ("t5-small-cpu", {"prompt_len": 257}, "bench.prompt_len: invalid value 257"),
        ("no-such-preset", {}, "unknown preset 'no-such-preset'"),
    ],
)
def test_bad_arguments(model, kwargs, match, no_compute):
    with pytest.raises(ConfigError, match=match):
        speed_benchmark(model, **{**TINY, **kwargs})
    assert not no_compute


def test_encoder_needs_no_room_for_generation():
    proto = SpeedProtocol.from_dict({**TINY, "prompt_len": 200, "new_tokens": 200})
    proto.check_fits(16, kind="encoder")
    with pytest.raises(ConfigError, match="bench.new_tokens"):
        proto.check_fits(16, kind="decoder_lm")


def test_unsupported_model_kind_names_the_model_and_the_allowed_kinds(monkeypatch, no_compute):
    monkeypatch.setattr(speed_mod, "DRIVERS", {"decoder_lm": speed_mod.DRIVERS["decoder_lm"]})
    with pytest.raises(
        ConfigError,
        match="bert-small-cpu: model.kind: invalid value 'encoder'.*allowed: decoder_lm",
    ):
        speed_compare(["gpt-tiny", "bert-small-cpu"], **TINY)
    assert not no_compute


# -- several models, one interleaved run --------------------------------------------------------

TINY_MODEL = {"kind": "decoder_lm", "vocab_size": 17, "dim": 16, "depth": 1, "num_heads": 2}


@pytest.fixture
def two_configs(tmp_path):
    """A run file (model: section + task + train) and a bare model config."""
    run = tmp_path / "run-a.yaml"
    run.write_text(
        yaml.safe_dump({"model": {**TINY_MODEL, "max_seq_len": 32}, "task": {"kind": "copy"}})
    )
    bare = tmp_path / "bare-b.yaml"
    bare.write_text(yaml.safe_dump({**TINY_MODEL, "depth": 2, "max_seq_len": 32}))
    return run, bare


def test_two_configs_give_two_entries_with_ratios(two_configs):
    specs = [config_spec(p) for p in two_configs]
    result = speed_compare(specs, **TINY)
    json.loads(json.dumps(result))  # one JSON object
    first, second = result["models"]
    assert result["reference"] == first["name"] == "run-a" and second["name"] == "bare-b"
    assert first["source"] == str(two_configs[0]) and first["kind"] == "decoder_lm"
    assert second["params"] > first["params"] > 0  # the second has two blocks
    assert first["active_params"] is None
    for key in SPEEDS:
        assert first[key] > 0 and math.isfinite(first[key]) and second[key] > 0
        assert first["ratio"][key] == 1.0
        assert second["ratio"][key] == pytest.approx(second[key] / first[key])
    assert result["protocol"]["batch_size"] == TINY["batch_size"] and result["threads"] == 1
    for phase in ("train", "fwd", "gen"):
        assert first["rel_iqr"][phase] >= 0


def test_encoder_and_encoder_decoder_side_by_side():
    enc = {**preset_dict("bert-small-cpu"), "dim": 16, "depth": 1, "num_heads": 2}
    seq2seq = {**preset_dict("t5-small-cpu"), "dim": 16, "depth": 1, "decoder_depth": 1}
    specs = [
        speed_mod.ModelSpec("enc", "test", ModelConfig.from_dict(enc)),
        speed_mod.ModelSpec("s2s", "test", ModelConfig.from_dict({**seq2seq, "num_heads": 2})),
    ]
    enc_row, s2s_row = speed_compare(specs, **TINY)["models"]
    assert enc_row["gen_tokens_per_s"] is None and enc_row["ratio"]["gen_tokens_per_s"] is None
    assert enc_row["train_tokens_per_s"] > 0 and enc_row["fwd_tokens_per_s"] > 0
    assert s2s_row["gen_tokens_per_s"] > 0 and s2s_row["ratio"]["gen_tokens_per_s"] is None
    assert s2s_row["ratio"]["train_tokens_per_s"] == pytest.approx(
        s2s_row["train_tokens_per_s"] / enc_row["train_tokens_per_s"]
    )


def test_same_model_twice_gets_numbered_names(two_configs):
    specs = [config_spec(two_configs[0])] * 2
    names = [m["name"] for m in speed_compare(specs, **TINY)["models"]]
    assert names == ["run-a", "run-a#2"]


class _Logged(_Bigram):
    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, ids):
        self.log.append((self.name, "train" if torch.is_grad_enabled() else "fwd"))
        return super().forward(ids)

    def generate(self, prompt):
        self.log.append((self.name, "gen"))
        return super().generate(prompt)


def test_measurements_are_interleaved_round_robin():
    log = []
    proto = SpeedProtocol.from_dict(
        {
            **TINY,
            "fwd_warmup": 1,
            "warmup": 0,
            "fwd_repeats": 2,
            "train_repeats": 2,
            "gen_repeats": 1,
            "prompt_len": 2,
            "new_tokens": 5,
        }
    )
    a, b = _Logged("a", log), _Logged("b", log)
    subjects = [speed_mod.Subject(m.name, m, m, m.generate, 11, (1, 7)) for m in (a, b)]
    speed_mod.measure(subjects, proto)
    checks = [("a", "gen"), ("b", "gen")]
    warm = [("a", "fwd"), ("b", "fwd")]
    round0 = [
        ("a", "fwd"),
        ("a", "gen"),
        ("a", "train"),
        ("b", "fwd"),
        ("b", "gen"),
        ("b", "train"),
    ]
    round1 = [("a", "fwd"), ("a", "train"), ("b", "fwd"), ("b", "train")]
    assert log == checks + warm + round0 + round1
    assert {k: len(v) for k, v in subjects[0].times.items()} == {"fwd": 2, "gen": 1, "train": 2}


def test_spaced_rounds_spreads_a_phase_evenly():
    assert speed_mod.spaced_rounds(5, 20) == {0, 4, 8, 12, 16}
    assert speed_mod.spaced_rounds(3, 3) == {0, 1, 2}
    assert len(speed_mod.spaced_rounds(7, 20)) == 7


def test_relative_iqr():
    assert speed_mod.relative_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 3)
    assert speed_mod.relative_iqr([2.0]) is None


# -- model files and command-line order ---------------------------------------------------------


def test_config_spec_reads_run_files_bare_configs_and_presets(tmp_path, two_configs):
    run, bare = two_configs
    assert config_spec(run).config.depth == 1 and config_spec(bare).config.depth == 2
    preset_run = tmp_path / "p.yaml"
    preset_run.write_text("model: {preset: gpt-tiny, depth: 1}\ntask: {kind: copy}\n")
    cfg = config_spec(preset_run).config
    assert cfg.depth == 1 and cfg.dim == preset_dict("gpt-tiny")["dim"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, "config file .*missing.yaml' does not exist"),
        ("model: {kind: decoder_lm, dim: 10, num_heads: 3}\n", r"bad.yaml: model.dim: 10 is not"),
        ("{kind: decoder_lm, depht: 2}\n", r"bad.yaml: model.depht: unknown field"),
        ("task: {kind: copy}\n", "bad.yaml: model.kind: missing"),
        ("- 1\n", "top level must be a mapping"),
    ],
)
def test_bad_model_files(tmp_path, text, match, no_compute):
    path = tmp_path / ("missing.yaml" if text is None else "bad.yaml")
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        speed_mod.order_specs([], ["gpt-tiny"], [path])
    assert not no_compute


def test_order_specs_follows_the_command_line(two_configs):
    run, bare = (str(p) for p in two_configs)
    raw = ["--config", run, "--threads", "1", "--preset=gpt-tiny", f"--config={bare}", "--json"]
    names = [s.name for s in speed_mod.order_specs(raw, ["gpt-tiny"], [run, bare])]
    assert names == ["run-a", "gpt-tiny", "bare-b"]
    # a value that looks like a flag is skipped; unrecoverable order falls back to presets first
    names = [s.name for s in speed_mod.order_specs(["--set", "x"], ["gpt-tiny"], [run])]
    assert names == ["gpt-tiny", "run-a"]


def test_display_rows_show_ratios_and_missing_generation():
    result = {
        "models": [
            {"name": "a", "kind": "decoder_lm", "params": 5, "active_params": None,
             "train_tokens_per_s": 100.0, "fwd_tokens_per_s": 400.0, "gen_tokens_per_s": 10.0,
             "ratio": {"train_tokens_per_s": 1.0, "fwd_tokens_per_s": 1.0,
                       "gen_tokens_per_s": 1.0}},
            {"name": "b", "kind": "encoder", "params": 7, "active_params": 3,
             "train_tokens_per_s": 150.0, "fwd_tokens_per_s": 200.0, "gen_tokens_per_s": None,
             "ratio": {"train_tokens_per_s": 1.5, "fwd_tokens_per_s": 0.5,
                       "gen_tokens_per_s": None}},
        ]
    }  # fmt: skip
    a, b = speed_mod.display_rows(result)
    assert a["train tok/s"] == "100 (1.00x)" and b["forward tok/s"] == "200 (0.50x)"
    assert b["generate tok/s"] == "-" and b["active params"] == 3 and a["active params"] is None


class _Sparse(nn.Module):
    """A part that says a token skips 21 of its parameters (as a MoE FFN does)."""

    def __init__(self):
        super().__init__()
        self.experts = nn.Linear(5, 5)  # 30 parameters

    def inactive_params(self):
        return 21


def test_active_params_come_from_the_parts():
    model = _Bigram()
    assert speed_mod.active_params(model) is None  # dense: not reported
    model.ffn = _Sparse()
    assert speed_mod.active_params(model) == 11 * 11 + 30 - 21


def test_a_mixture_of_experts_reports_active_params_and_trains_with_its_aux_loss(monkeypatch):
    from formerlab import list_registered
    from formerlab.layers import aux as aux_mod

    if "moe" not in list_registered("ffn"):
        pytest.skip("ffn kind 'moe' is not registered")
    seen = []
    real = aux_mod.collect_aux

    def spy(model):
        total, metrics = real(model)
        seen.append(total is not None)
        return total, metrics

    monkeypatch.setattr(speed_mod, "collect_aux", spy)
    moe = {**TINY_MODEL, "max_seq_len": 32, "ffn": {"kind": "moe", "num_experts": 4, "top_k": 1}}
    spec = speed_mod.ModelSpec("moe", "test", ModelConfig.from_dict(moe))
    (row,) = speed_compare([spec], **TINY)["models"]
    assert 0 < row["active_params"] < row["params"]
    assert seen and all(seen)  # every training step added the recorded aux loss


# -- the command --------------------------------------------------------------------------------

CLI_TINY = [f"--set={k}={v}" for k, v in TINY.items()]


def test_cli_measures_mixed_presets_and_configs_in_order(two_configs, capsys):
    from formerlab.cli import main

    run, bare = (str(p) for p in two_configs)
    args = ["bench", "speed", "--config", run, "--preset", "gpt-tiny", "--config", bare]
    assert main([*args, "--threads", "1", *CLI_TINY, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert [m["name"] for m in result["models"]] == ["run-a", "gpt-tiny", "bare-b"]
    assert result["reference"] == "run-a" and result["threads"] == 1
    assert result["protocol"]["seq_len"] == TINY["seq_len"]
    assert all(m[k] > 0 for m in result["models"] for k in SPEEDS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "nope.yaml"], "nope.yaml' does not exist"),
        (["--preset", "gpt-tiny", "--set", "repeats=2"], "bench.repeats: unknown field"),
        (["--preset", "gpt-tiny", "--set", "seq_len=999"], "gpt-tiny: bench.seq_len: invalid"),
    ],
)
def test_cli_errors_before_compute(args, message, capsys, no_compute):
    from formerlab.cli import main

    assert main(["bench", "speed", *args]) == 2
    assert message in capsys.readouterr().err
    assert not no_compute
