"""benchmarks/norm_speed.py at a tiny size: one JSON object, the three kernels in both phases."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def norm_speed(load_benchmark):
    return load_benchmark("norm_speed")


def test_prints_one_object_with_ratios_to_layer_norm(norm_speed, capsys):
    result = norm_speed.main(["--shape", "4", "32", "--repeats", "3", "--warmup", "1"])
    assert json.loads(capsys.readouterr().out) == result
    for phase in ("fwd", "fwd_bwd"):
        rows = result[phase]
        assert set(rows) == {"layer_norm", "torch_rms_norm", "formerlab_rms_norm"}
        assert rows["layer_norm"]["vs_layer_norm"] == 1.0
        for row in rows.values():
            assert row["ms"] > 0
            assert row["vs_layer_norm"] == pytest.approx(
                row["ms"] / rows["layer_norm"]["ms"], rel=0.05, abs=1e-3
            )


def test_bad_arguments_exit(norm_speed):
    with pytest.raises(SystemExit):
        norm_speed.main(["--repeats", "0"])
