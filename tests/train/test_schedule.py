"""Learning-rate schedules: warm-up shape, decay shape, end values, stateless API, config errors."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import formerlab as fl
from formerlab.train.config import TrainConfig
from formerlab.train.schedule import CosineScheduleConfig, build_schedule, lr_factor

KINDS = ("constant", "linear", "cosine")


@pytest.mark.parametrize("kind", KINDS)
def test_warmup_rises_linearly_to_the_peak(kind: str) -> None:
    sched = build_schedule({"kind": kind, "warmup_steps": 4}, total_steps=20)
    assert [sched.factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert sched.factor(4) == 1.0  # decay starts from the peak


@pytest.mark.parametrize("kind", KINDS)
def test_no_warmup_starts_at_the_peak(kind: str) -> None:
    assert lr_factor({"kind": kind}, 0, 10) == 1.0


@pytest.mark.parametrize(("kind", "end"), [("constant", 1.0), ("linear", 0.0), ("cosine", 0.1)])
def test_default_end_values(kind: str, end: float) -> None:
    sched = build_schedule({"kind": kind, "warmup_steps": 2}, total_steps=12)
    assert sched.factor(12) == pytest.approx(end)
    assert sched.factor(100) == pytest.approx(end)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decay_reaches_min_lr_ratio_and_is_monotone(kind: str) -> None:
    sched = build_schedule({"kind": kind, "warmup_steps": 3, "min_lr_ratio": 0.25}, total_steps=23)
    values = [sched.factor(s) for s in range(3, 24)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.25)


def test_midpoints_distinguish_linear_from_cosine() -> None:
    # progress 1/4 after a 10-step warm-up of a 50-step run is step 20
    lin = lr_factor({"kind": "linear", "warmup_steps": 10, "min_lr_ratio": 0.2}, 20, 50)
    cos = lr_factor({"kind": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.2}, 20, 50)
    assert lin == pytest.approx(1 - 0.8 * 0.25)
    assert cos == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))


@given(
    kind=st.sampled_from(KINDS),
    total=st.integers(1, 500),
    warmup_frac=st.floats(0, 1),
    ratio=st.floats(0, 1),
    data=st.data(),
)
def test_factor_stays_between_floor_and_peak(kind, total, warmup_frac, ratio, data) -> None:
    cfg = {"kind": kind, "warmup_steps": int(warmup_frac * total)}
    if kind != "constant":
        cfg["min_lr_ratio"] = ratio
    step = data.draw(st.integers(0, total))
    factor = lr_factor(cfg, step, total)
    floor = 0.0 if step < cfg["warmup_steps"] else cfg.get("min_lr_ratio", 1.0)
    assert floor - 1e-12 <= factor <= 1.0 + 1e-12
    assert lr_factor(cfg, step, total) == factor  # stateless: same inputs, same value


def test_cosine_is_the_default_schedule_with_floor_point_one() -> None:
    cfg = TrainConfig().schedule
    assert isinstance(cfg, CosineScheduleConfig) and cfg.min_lr_ratio == 0.1
    assert sorted(fl.list_registered("schedule")) == ["constant", "cosine", "linear"]


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        (
            {"kind": "cosine", "min_lr_ratio": 1.5},
            r"train\.schedule\.min_lr_ratio: invalid value 1\.5",
        ),
        ({"kind": "linear", "min_lr_ratio": -0.1}, r"train\.schedule\.min_lr_ratio: invalid value"),
        (
            {"kind": "constant", "warmup_steps": -1},
            r"train\.schedule\.warmup_steps: invalid value -1",
        ),
        ({"kind": "cosine", "warmup_steps": 50}, r"train\.schedule\.warmup_steps: 50 exceeds"),
        ({"kind": "step"}, r"train\.schedule\.kind: unknown schedule kind 'step'.*constant"),
    ],
)
def test_invalid_schedules_name_the_field(schedule: dict, match: str) -> None:
    with pytest.raises(fl.ConfigError, match=match):
        TrainConfig.from_dict({"steps": 10, "schedule": schedule}, "train")


def test_total_steps_must_be_positive() -> None:
    with pytest.raises(fl.ConfigError, match=r"train\.steps"):
        build_schedule({"kind": "constant"}, total_steps=0)
