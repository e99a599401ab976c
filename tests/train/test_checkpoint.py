"""Checkpoints: exact round trip, manifest verification, quarantine and fallback, keep-last-K."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import formerlab as fl
from formerlab.train import checkpoint as ck
from formerlab.train.trainer import capture_rng, restore_rng


class TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 12, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("counter", torch.zeros(2))


def make_state(step: int) -> dict:
    model = TiedNet()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.head(model.mid(model.embed(torch.arange(12)))).sum().backward()
    opt.step()
    return {"step": step, "skipped_steps": 1, "optimizer": opt.state_dict(), "rng": capture_rng()}


def save(root: Path, step: int, keep: int = 10, model: nn.Module | None = None) -> Path:
    return ck.save_checkpoint(root, step, model or TiedNet(), make_state(step), keep=keep)


def test_round_trip_is_exact_and_keeps_weights_tied(tmp_path: Path) -> None:
    model = TiedNet()
    with torch.no_grad():
        model.counter.fill_(7.0)
    state = make_state(3)
    path = ck.save_checkpoint(tmp_path, 3, model, state, keep=2)
    assert path == tmp_path / "step_3"
    assert sorted(p.name for p in path.iterdir()) == [
        "MANIFEST.json",
        "model.safetensors",
        "state.pt",
    ]
    fresh = TiedNet()
    loaded = ck.load_checkpoint(path, fresh)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh.head.weight is fresh.embed.weight
    assert loaded["step"] == 3 and loaded["skipped_steps"] == 1
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    opt.load_state_dict(loaded["optimizer"])  # the optimizer state is usable as is


def test_state_loads_with_weights_only_and_rng_restores(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    path = save(tmp_path, 1)  # captures the RNG streams; saving itself draws nothing
    expected = (torch.rand(3), random.random(), np.random.rand())
    raw = torch.load(path / ck.STATE, weights_only=True)
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    restore_rng(raw["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert (random.random(), np.random.rand()) == expected[1:]


def test_manifest_records_size_and_sha256(tmp_path: Path) -> None:
    path = save(tmp_path, 5)
    manifest = json.loads((path / ck.MANIFEST).read_text())
    assert manifest["step"] == 5
    for name in (ck.WEIGHTS, ck.STATE):
        entry = manifest["files"][name]
        assert entry == {
            "sha256": ck.sha256_file(path / name),
            "size": (path / name).stat().st_size,
        }


def test_keeps_only_the_newest_k(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8, 10):
        save(tmp_path, step, keep=2)
    assert [s for s, _ in ck.step_dirs(tmp_path)] == [8, 10]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10", "step_8"]


def flip_bit(path: Path) -> None:
    data = bytearray((path / ck.WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / ck.WEIGHTS).write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = (path / ck.STATE).read_bytes()
    (path / ck.STATE).write_bytes(data[: len(data) - 100])


def extend(path: Path) -> None:
    with open(path / ck.STATE, "ab") as f:
        f.write(b"\0")


def drop_file(path: Path) -> None:
    (path / ck.WEIGHTS).unlink()


def drop_manifest(path: Path) -> None:
    (path / ck.MANIFEST).unlink()


def garble_manifest(path: Path) -> None:
    (path / ck.MANIFEST).write_text('{"files": {')


def manifest_without_state(path: Path) -> None:
    manifest = json.loads((path / ck.MANIFEST).read_text())
    del manifest["files"][ck.STATE]
    (path / ck.MANIFEST).write_text(json.dumps(manifest))


CORRUPTIONS = [
    flip_bit,
    truncate,
    extend,
    drop_file,
    drop_manifest,
    garble_manifest,
    manifest_without_state,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_corrupt_latest_is_quarantined_and_previous_used(
    tmp_path: Path, corrupt: Callable[[Path], None]
) -> None:
    save(tmp_path, 2)
    latest = save(tmp_path, 4)
    corrupt(latest)
    with pytest.raises(fl.CheckpointError, match="step_4"):
        ck.verify_checkpoint(latest)
    with pytest.warns(ck.CorruptCheckpointWarning, match="step_4"):
        assert ck.latest_valid_checkpoint(tmp_path) == tmp_path / "step_2"
    assert not latest.exists() and (tmp_path / "corrupt" / "step_4").is_dir()
    assert ck.latest_valid_checkpoint(tmp_path) == tmp_path / "step_2"  # stable afterwards


@pytest.mark.parametrize("corrupt", [flip_bit, truncate, drop_manifest], ids=lambda f: f.__name__)
def test_loading_a_corrupt_checkpoint_raises(tmp_path: Path, corrupt: Callable) -> None:
    path = save(tmp_path, 1)
    corrupt(path)
    with pytest.raises(fl.CheckpointError):
        ck.load_checkpoint(path, TiedNet())


def test_all_corrupt_means_no_checkpoint(tmp_path: Path) -> None:
    flip_bit(save(tmp_path, 1))
    flip_bit(save(tmp_path, 2))
    with pytest.warns(ck.CorruptCheckpointWarning):
        assert ck.latest_valid_checkpoint(tmp_path) is None
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == ["step_1", "step_2"]
    assert ck.latest_valid_checkpoint(tmp_path / "missing") is None


def test_repeated_quarantine_of_the_same_name_keeps_both(tmp_path: Path) -> None:
    for _ in range(2):
        flip_bit(save(tmp_path, 3))
        with pytest.warns(ck.CorruptCheckpointWarning):
            ck.latest_valid_checkpoint(tmp_path)
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == ["step_3", "step_3.1"]


def test_leftover_temporary_directories_are_removed_not_used(tmp_path: Path) -> None:
    save(tmp_path, 2)
    complete = save(tmp_path, 4)
    leftover = tmp_path / ".tmp-step_6-abc"
    complete.rename(leftover)  # a fully written checkpoint that was never renamed
    assert ck.latest_valid_checkpoint(tmp_path) == tmp_path / "step_2"
    assert not leftover.exists()


def test_a_failed_save_leaves_nothing_behind(tmp_path: Path) -> None:
    save(tmp_path, 1)
    with pytest.raises(Exception, match=r"pickle|lambda"):
        ck.save_checkpoint(tmp_path, 2, TiedNet(), {"bad": lambda: 0}, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    with pytest.raises(fl.CheckpointError, match="do not fit the model"):
        ck.load_checkpoint(path, nn.Linear(4, 4))


def test_a_non_dict_state_is_refused(tmp_path: Path) -> None:
    path = ck.save_checkpoint(tmp_path, 1, TiedNet(), [1, 2], keep=1)  # type: ignore[arg-type]
    with pytest.raises(fl.CheckpointError, match="not a dict"):
        ck.load_checkpoint(path, TiedNet())


def test_saving_the_same_step_again_replaces_it(tmp_path: Path) -> None:
    first = TiedNet()
    save(tmp_path, 5, model=first)
    second = TiedNet()
    save(tmp_path, 5, model=second)
    loaded = TiedNet()
    ck.load_checkpoint(tmp_path / "step_5", loaded)
    assert torch.equal(loaded.mid.weight, second.mid.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_5"]


@pytest.mark.parametrize("value", ["after_weight", "before_rename@x", "@3"])
def test_an_invalid_fault_request_is_a_config_error(monkeypatch, value: str) -> None:
    monkeypatch.setenv(ck.FAULT_ENV, value)
    with pytest.raises(fl.ConfigError, match=r"FORMERLAB_FAULT: invalid value.*after_weights"):
        ck.fault_from_env()


def test_fault_request_parsing(monkeypatch) -> None:
    monkeypatch.setenv(ck.FAULT_ENV, "before_rename@4")
    assert ck.fault_from_env() == ("before_rename", 4)
    monkeypatch.setenv(ck.FAULT_ENV, "after_state")
    assert ck.fault_from_env() == ("after_state", None)
    monkeypatch.delenv(ck.FAULT_ENV)
    assert ck.fault_from_env() is None


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(fl.ConfigError, match="keep_checkpoints"):
        save(tmp_path, 1, keep=0)
