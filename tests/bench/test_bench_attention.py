"""The attention benchmark at tiny lengths: records, budgets, skips, fits, plot, CLI (never timed)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch.nn import functional as F

from formerlab import list_registered
from formerlab.bench import attention as bench
from formerlab.bench.attention import (
    AttentionBenchConfig,
    attention_benchmark,
    fit_exponent,
    peak_allocated_mb,
    predicted_peak_mb,
    summary_rows,
    write_plot,
)
from formerlab.cli import main
from formerlab.errors import ConfigError
from formerlab.layers.attention import AttentionConfig, ProjectedAttention
from formerlab.layers.linear import DenseConfig
from formerlab.registry import ATTENTION

TINY = {"lengths": [16, 32, 64], "repeats": 1, "warmup": 1, "threads": 1}
RECORD_KEYS = {
    "kind",
    "length",
    "causal",
    "fwd_bwd_ms",
    "peak_mem_mb",
    "first_call_ms",
    "timed_calls",
    "over_budget",
    "vs_softmax",
    "reason",
}


# -- a throwaway kind: bidirectional only, rejects lengths over 32, records how it was built -----


@dataclass(kw_only=True)
class _BidirOnlyConfig(AttentionConfig):
    kind = "bench_test_bidir_only"


class _BidirOnly(ProjectedAttention):
    supports_causal = False
    supports_padding_mask = True
    built: list[dict] = []

    def __init__(self, cfg, **dims):
        if dims["max_seq_len"] > 32:
            raise ConfigError(f"max_seq_len: {dims['max_seq_len']} over 32")
        super().__init__(cfg, **dims)
        _BidirOnly.built.append(dims)

    def attend(self, q, k, v, *, key_mask, cache):
        return F.scaled_dot_product_attention(q, k, v)


@pytest.fixture
def bidir_only():
    ATTENTION.register(_BidirOnlyConfig)(_BidirOnly)
    _BidirOnly.built.clear()
    try:
        yield _BidirOnlyConfig.kind
    finally:
        ATTENTION.unregister(_BidirOnlyConfig.kind)


def _by_length(result, kind):
    return {r["length"]: r for r in result["records"] if r["kind"] == kind}


# -- records --------------------------------------------------------------------------------------


def test_softmax_records_and_run_facts():
    before = torch.get_num_threads()
    result = attention_benchmark(kinds=["softmax"], causal=True, **TINY)
    assert torch.get_num_threads() == before
    assert result["threads"] == 1 and result["torch"] == torch.__version__
    assert result["kinds"] == ["softmax"] and result["lengths"] == [16, 32, 64]
    assert (result["dim"], result["num_heads"], result["batch_size"]) == (256, 4, 1)
    assert result["configs"]["softmax"]["kind"] == "softmax"
    records = result["records"]
    assert [r["length"] for r in records] == [16, 32, 64]
    for r in records:
        assert set(r) == RECORD_KEYS
        assert r["causal"] is True and r["reason"] is None and r["timed_calls"] == 1
        assert r["fwd_bwd_ms"] > 0 and math.isfinite(r["fwd_bwd_ms"])
        assert r["first_call_ms"] > 0 and r["vs_softmax"] == 1.0
    # same ops on larger tensors: the peak of live allocations cannot shrink with length
    peaks = [r["peak_mem_mb"] for r in records]
    assert 0 < peaks[0] <= peaks[1] <= peaks[2]
    json.loads(json.dumps(result))


def test_lengths_are_measured_in_increasing_order():
    result = attention_benchmark(kinds=["softmax"], **{**TINY, "lengths": [32, 16]})
    assert result["lengths"] == [16, 32]
    assert [r["length"] for r in result["records"]] == [16, 32]


def test_kinds_are_built_through_the_registry_like_a_model(bidir_only):
    attention_benchmark(kinds=[bidir_only], **{**TINY, "lengths": [16, 32]})
    assert len(_BidirOnly.built) == 2
    for dims, length in zip(_BidirOnly.built, [16, 32], strict=True):
        assert dims["max_seq_len"] == length and dims["causal"] is False
        assert (dims["dim"], dims["num_heads"]) == (256, 4)
        assert isinstance(dims["linear"], DenseConfig)


def test_no_warmup_and_no_memory():
    result = attention_benchmark(kinds=["softmax"], memory=False, **{**TINY, "warmup": 0})
    assert result["memory_metric"] is None
    for r in result["records"]:
        assert r["peak_mem_mb"] is None and r["first_call_ms"] is None and r["fwd_bwd_ms"] > 0


def test_default_kinds_are_every_registered_kind():
    assert AttentionBenchConfig().run_kinds() == list_registered("attention")


# -- skips: capability, rejected length, budget, memory, out of memory ---------------------------


def test_kind_without_causal_support_is_skipped_with_a_reason(bidir_only):
    result = attention_benchmark(kinds=["softmax", bidir_only], causal=True, **TINY)
    assert not _BidirOnly.built  # never even built
    for r in _by_length(result, bidir_only).values():
        assert r["fwd_bwd_ms"] is None and r["peak_mem_mb"] is None
        assert "lacks supports_causal" in r["reason"]
    assert all(r["fwd_bwd_ms"] for r in _by_length(result, "softmax").values())


def test_bidirectional_run_measures_it_and_a_rejected_length_is_skipped(bidir_only):
    result = attention_benchmark(kinds=["softmax", bidir_only], **TINY)
    mine = _by_length(result, bidir_only)
    assert mine[16]["fwd_bwd_ms"] > 0 and mine[32]["fwd_bwd_ms"] > 0
    assert mine[64]["fwd_bwd_ms"] is None
    assert mine[64]["reason"] == "rejected: max_seq_len: 64 over 32"
    soft = _by_length(result, "softmax")
    for length in (16, 32):  # speed relative to softmax at the same length
        assert mine[length]["vs_softmax"] == soft[length]["fwd_bwd_ms"] / mine[length]["fwd_bwd_ms"]


def test_time_budget_stops_the_repeats_and_the_longer_lengths():
    result = attention_benchmark(kinds=["softmax"], timeout_s=1e-9, **{**TINY, "repeats": 3})
    first, *rest = result["records"]
    assert first["over_budget"] is True and first["timed_calls"] == 1 and first["fwd_bwd_ms"] > 0
    for r in rest:
        assert r["fwd_bwd_ms"] is None and r["peak_mem_mb"] is None and r["timed_calls"] == 0
        assert r["reason"] == "time budget: a call at length 16 took over 1e-09 s"


def test_length_predicted_not_to_fit_in_memory_is_skipped(monkeypatch):
    monkeypatch.setattr(bench, "available_memory_mb", lambda: 1e-3)
    records = attention_benchmark(kinds=["softmax"], **TINY)["records"]
    assert records[0]["fwd_bwd_ms"] > 0  # nothing to extrapolate from yet
    for r in records[1:]:
        assert r["fwd_bwd_ms"] is None and r["reason"].startswith("memory: predicted peak")


def test_out_of_memory_skips_the_longer_lengths(monkeypatch):
    real = bench.measure

    def measure(module, length, cfg):
        if length == 32:
            raise torch.OutOfMemoryError("DefaultCPUAllocator: not enough memory\ndetails")
        return real(module, length, cfg)

    monkeypatch.setattr(bench, "measure", measure)
    records = attention_benchmark(kinds=["softmax"], **TINY)["records"]
    assert records[0]["fwd_bwd_ms"] > 0
    reason = "out of memory at length 32: DefaultCPUAllocator: not enough memory"
    assert [r["reason"] for r in records[1:]] == [reason, reason]


# -- memory measurement ---------------------------------------------------------------------------


def test_peak_allocated_counts_live_blocks_exactly():
    def fn():
        a = torch.empty(1_000_000)  # 4,000,000 bytes
        b = torch.empty(500_000)  # + 2,000,000 = 6,000,000 live
        del a
        c = torch.empty(750_000)  # 2,000,000 + 3,000,000 = 5,000,000 live
        return b, c

    assert peak_allocated_mb(fn) == 6_000_000 / 2**20


def test_peak_ignores_frees_of_blocks_from_before_the_call():
    events = [(0, 1, 100), (1, 9, -70), (2, 2, 30), (3, 1, -100), (4, 3, 50)]
    assert bench._peak_bytes(events) == 130


def test_predicted_peak_extrapolates_from_the_last_two_lengths():
    rec = [{"length": n, "peak_mem_mb": m} for n, m in [(8, None), (16, 1.0), (32, 4.0)]]
    assert predicted_peak_mb(rec, 64) == pytest.approx(16.0)  # quadratic growth continues
    assert predicted_peak_mb(rec[:2], 64) == pytest.approx(16.0)  # one point: assume quadratic
    flat = [{"length": 16, "peak_mem_mb": 2.0}, {"length": 32, "peak_mem_mb": 2.0}]
    assert predicted_peak_mb(flat, 64) == pytest.approx(4.0)  # never below linear
    assert predicted_peak_mb(rec[:1], 64) is None


# -- exponent fit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("slope", [1.0, 1.37, 2.0])
def test_fit_recovers_the_exact_slope_inside_the_range(slope):
    lengths = [512, 1024, 2048, 4096, 8192, 16384, 32768]
    values = [3.0 * n**slope for n in lengths]
    values[0] *= 50  # outside [2048, 16384]: must not count
    values[-1] = 1e-9
    assert fit_exponent(lengths, values, 2048, 16384) == pytest.approx(slope, abs=1e-12)


def test_fit_skips_missing_values_and_needs_two_lengths():
    assert fit_exponent([2048, 4096, 8192], [1.0, None, 4.0], 2048, 16384) == pytest.approx(1.0)
    assert fit_exponent([2048, 4096], [1.0, None], 2048, 16384) is None
    assert fit_exponent([1024, 2048], [1.0, 2.0], 2048, 16384) is None


def test_fit_is_least_squares_on_noisy_points():
    # log2 points (1, 0), (2, 1), (3, 1): least-squares slope 0.5
    assert fit_exponent([2, 4, 8], [1.0, 2.0, 2.0]) == pytest.approx(0.5)


def test_result_exponents_fit_the_records_in_range():
    result = attention_benchmark(kinds=["softmax"], fit_min=16, fit_max=32, **TINY)
    rec = result["records"][:2]
    ms, mem = [r["fwd_bwd_ms"] for r in rec], [r["peak_mem_mb"] for r in rec]
    assert result["time_exponents"]["softmax"] == pytest.approx(fit_exponent([16, 32], ms))
    assert result["memory_exponents"]["softmax"] == pytest.approx(fit_exponent([16, 32], mem))
    assert result["fit_range"] == [16, 32]


# -- plot and text summary ------------------------------------------------------------------------


def _synthetic_result():
    records = [
        {"kind": k, "length": n, "fwd_bwd_ms": ms, "peak_mem_mb": mb, "reason": why}
        for k, n, ms, mb, why in [
            ("softmax", 1024, 10.0, 4.0, None),
            ("softmax", 2048, 40.0, 8.0, None),
            ("local", 1024, 5.0, None, None),
            ("local", 2048, None, None, "time budget"),
            ("other", 1024, None, None, "lacks supports_causal"),
        ]
    ]
    return {
        "kinds": ["softmax", "local", "other"],
        "records": records,
        "causal": True,
        "dim": 256,
        "threads": 2,
        "time_exponents": {"softmax": 2.0, "local": None, "other": None},
        "memory_exponents": {"softmax": 1.0, "local": None, "other": None},
    }


@pytest.mark.parametrize(("name", "magic"), [("plot.png", b"\x89PNG"), ("plot.svg", b"<?xml")])
def test_write_plot_writes_one_file(tmp_path, name, magic):
    write_plot(_synthetic_result(), tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_bytes().startswith(magic)


def test_benchmark_writes_the_plot(tmp_path):
    path = tmp_path / "attention.png"
    result = attention_benchmark(kinds=["softmax"], plot=path, **{**TINY, "lengths": [16, 32]})
    assert result["plot"] == str(path) and path.read_bytes().startswith(b"\x89PNG")


def test_summary_rows():
    rows = summary_rows(_synthetic_result())
    assert rows[0] == {
        "kind": "softmax",
        "1024": "10 ms / 4 MiB",
        "2048": "40 ms / 8 MiB",
        "time_exp": 2.0,
        "mem_exp": 1.0,
        "skipped": None,
    }
    assert rows[1]["1024"] == "5 ms" and rows[1]["2048"] == "-"
    assert rows[1]["skipped"] == "time budget" and rows[2]["skipped"] == "lacks supports_causal"


# -- validation before compute --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"kinds": ["nope"]}, r"bench.kinds\[0\]: unknown attention kind 'nope'; registered: .*"),
        ({"kinds": []}, "bench.kinds: invalid value.*one or more"),
        ({"kinds": ["softmax", "softmax"]}, "bench.kinds: .*'softmax' repeats"),
        ({"lengths": []}, "bench.lengths: invalid value"),
        ({"lengths": [16, 0]}, r"bench.lengths\[1\]: invalid value 0; allowed: >= 1"),
        ({"lengths": [16, 16]}, "bench.lengths: .*distinct"),
        ({"lengths": ["x"]}, r"bench.lengths\[0\]: invalid value 'x'"),
        ({"repeats": 0}, "bench.repeats: invalid value 0; allowed: >= 1"),
        ({"warmup": -1}, "bench.warmup: invalid value -1; allowed: >= 0"),
        ({"threads": 0}, "bench.threads: invalid value 0"),
        ({"timeout_s": 0}, "bench.timeout_s: invalid value 0.0; allowed: a finite"),
        ({"timeout_s": math.inf}, "bench.timeout_s: invalid value inf"),
        ({"num_heads": 3}, r"bench.num_heads: invalid value 3; allowed: a divisor of dim \(256\)"),
        (
            {"fit_min": 4096, "fit_max": 2048},
            "bench.fit_max: invalid value 2048; allowed: > fit_min",
        ),
        ({"configs": {"local": {}}}, "bench.configs: invalid value 'local'"),
        ({"configs": {"softmax": {"nope": 1}}}, "bench.configs.softmax.nope: unknown field"),
        ({"repeat": 3}, "bench.repeat: unknown field"),
        (
            {"plot": "out.txt"},
            "bench.plot: invalid value 'out.txt'; allowed: a file ending in .png",
        ),
        ({"plot": "/no/such/dir/a.png"}, "bench.plot: folder '/no/such/dir' does not exist"),
    ],
)
def test_bad_arguments_fail_before_compute(options, match, monkeypatch):
    ran = []
    monkeypatch.setattr(bench, "measure", lambda *a, **k: ran.append(1))
    with pytest.raises(ConfigError, match=match):
        attention_benchmark(**{**TINY, "kinds": ["softmax"], **options})
    assert not ran


def test_per_kind_config_fields_are_applied():
    result = attention_benchmark(
        kinds=["softmax"], configs={"softmax": {"num_kv_heads": 2}}, **{**TINY, "lengths": [16]}
    )
    assert result["configs"]["softmax"]["num_kv_heads"] == 2
    assert result["records"][0]["fwd_bwd_ms"] > 0


# -- command line ---------------------------------------------------------------------------------


def test_cli_json(capsys):
    argv = ["bench", "attention", "--kinds", "softmax", "--lengths", "32,16", "--repeats", "1"]
    assert main([*argv, "--threads", "1", "--causal", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["causal"] is True and result["threads"] == 1 and result["repeats"] == 1
    assert [(r["kind"], r["length"]) for r in result["records"]] == [
        ("softmax", 16),
        ("softmax", 32),
    ]
    assert "softmax L=16" in captured.err  # progress goes to stderr, JSON alone to stdout


def test_cli_table_and_plot(capsys, tmp_path):
    plot = tmp_path / "a.png"
    argv = ["bench", "attention", "--kinds", "softmax", "--lengths", "16", "--repeats", "1"]
    assert main([*argv, "--plot", str(plot)]) == 0
    assert "softmax" in capsys.readouterr().out and plot.is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lengths", "16,x"], "--lengths: invalid value '16,x'; allowed: comma-separated"),
        (["--kinds", "softmax,,local"], "--kinds: invalid value 'softmax,,local'"),
        (["--kinds", "nope"], "unknown attention kind 'nope'"),
        (["--timeout-s", "-1"], "bench.timeout_s: invalid value -1.0"),
    ],
)
def test_cli_errors_are_one_line(args, message, capsys):
    assert main(["bench", "attention", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_help_has_an_example(capsys):
    assert main(["bench", "attention", "--help"]) == 0
    assert "Example: formerlab bench attention" in capsys.readouterr().out
