"""retrieval: pair labels traced back to their files on a fixture tree, balance, split by file,
determinism, cache, batch layout, the stdlib default and config / model errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import formerlab as fl
from formerlab.errors import ConfigError, DataError
from formerlab.registry import TASK
from formerlab.tasks.classification import CLS_ID, FIRST_SYMBOL_ID, PAD_ID, SPLITS
from formerlab.tasks.retrieval import RetrievalTask

PACKAGES = {"alpha": 7, "beta": 6, "gamma": 5}
DOC_LEN = 40


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, bytes]:
    """Three packages of files of random bytes (any 40-byte window names its file), plus files
    the task must leave out: a top-level module, a tiny file and a tests/ folder."""
    rng = np.random.default_rng(7)
    files = {}
    for package, count in PACKAGES.items():
        for i in range(count):
            size = 30 if (package, i) == ("gamma", 0) else int(rng.integers(60, 200))
            files[f"{package}/m{i}.py"] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    left_out = {"top.py": b"x" * 100, "alpha/tiny.py": b"x" * 10, "beta/tests/t.py": b"y" * 100}
    for rel, data in {**files, **left_out}.items():
        (tmp_path / "corpus" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "corpus" / rel).write_bytes(data)
    return files


def make(root: Path, seed: int = 0, **fields: object) -> RetrievalTask:
    cfg = {
        "kind": "retrieval",
        "root": str(root / "corpus"),
        "doc_len": DOC_LEN,
        "seq_len": DOC_LEN + 1,
        "min_file_bytes": 20,
        "val_file_fraction": 0.3,
        "test_file_fraction": 0.3,
        "train_size": 60,
        "val_size": 20,
        "test_size": 20,
        "eval_batches": 2,
    }
    return TASK.build({**cfg, **fields}, seed=seed)


def documents(task: RetrievalTask, split: str) -> list[tuple[bytes, bytes, int]]:
    """Every pair of ``split`` as (bytes of doc a, bytes of doc b, label), read from batches."""
    n = len(task.splits[split])
    batch = task.collate(split, np.arange(n))
    out = []
    rows = zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True)
    for ids, mask, label in rows:
        docs = [
            bytes((row[m][1:] - FIRST_SYMBOL_ID).tolist()) for row, m in zip(ids, mask, strict=True)
        ]
        out.append((docs[0], docs[1], int(label)))
    return out


def owner(files: dict[str, bytes], doc: bytes, window: str) -> str:
    hits = [
        name
        for name, data in files.items()
        if (data.startswith(doc) if window == "first" else doc in data)
    ]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("window", ["first", "random"])
def test_labels_say_whether_the_files_share_a_package(tmp_path, corpus, window) -> None:
    task = make(tmp_path, window=window)
    for split in SPLITS:
        allowed = set(task.split_file_names(split))
        for a, b, label in documents(task, split):
            fa, fb = owner(corpus, a, window), owner(corpus, b, window)
            assert fa != fb and {fa, fb} <= allowed
            assert label == int(fa.split("/")[0] == fb.split("/")[0])
            assert len(a) == min(DOC_LEN, len(corpus[fa])) and len(b) == min(
                DOC_LEN, len(corpus[fb])
            )


def test_labels_alternate_so_every_split_is_balanced(tmp_path, corpus) -> None:
    task = make(tmp_path, train_size=61)
    for split in SPLITS:
        labels = task.splits[split].labels
        assert labels.tolist() == [1 - i % 2 for i in range(len(labels))]
    info = task.data_info()
    assert info["splits"]["train"]["class_counts"] == [30, 31]
    assert info["splits"]["val"]["majority_baseline"] == 0.5


def test_split_by_file_stratified_by_package(tmp_path, corpus) -> None:
    task = make(tmp_path)
    names = {s: task.split_file_names(s) for s in SPLITS}
    for s, t in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not set(names[s]) & set(names[t])
    used = sorted(corpus)  # the tiny, top-level and tests/ files are left out
    assert sorted(n for s in SPLITS for n in names[s]) == used == task.files
    counts = task.data_info()["package_files_train_val_test"]
    # round(n * 0.3) per package to val and to test: 7 -> 2/2, 6 -> 2/2, 5 -> 2/2 (5 * 0.3 = 1.5)
    assert counts == {"alpha": [3, 2, 2], "beta": [2, 2, 2], "gamma": [1, 2, 2]}
    skipped = task.data_info()["files_skipped"]
    assert skipped == {"top_level_modules": 1, "shorter_than_min_file_bytes": 1}


def test_data_depend_on_data_seed_only(tmp_path, corpus) -> None:
    a = make(tmp_path, cache=False)
    b = make(tmp_path, cache=False, seed=5)
    c = make(tmp_path, cache=False, data_seed=1)
    assert a.pool.sha256() == b.pool.sha256() != c.pool.sha256()
    assert a.split_packages == b.split_packages
    torch.testing.assert_close(a.batch("val", 1, 4), b.batch("val", 1, 4))
    assert not torch.equal(a.batch("train", 0, 8)["input_ids"], b.batch("train", 0, 8)["input_ids"])


def test_cache_is_reused_and_keyed_by_the_corpus(tmp_path, corpus, cache_dir) -> None:
    first = make(tmp_path)
    again = make(tmp_path)
    assert not first.cache_hit and again.cache_hit and again.pool.sha256() == first.pool.sha256()
    assert len(list((cache_dir / "retrieval").glob("*.pt"))) == 1
    (tmp_path / "corpus" / "beta" / "m1.py").write_bytes(b"z" * 120)  # same name, new content
    changed = make(tmp_path)
    assert (
        not changed.cache_hit and changed.data_info()["corpus_sha256"] != first.manifest["sha256"]
    )
    path = changed.cache_path()
    path.write_bytes(b"not a dataset")
    with pytest.warns(UserWarning, match="ignoring dataset cache"):
        regenerated = make(tmp_path)
    assert regenerated.pool.sha256() == changed.pool.sha256()


def test_batch_layout(tmp_path, corpus) -> None:
    task = make(tmp_path, doc_len=100, seq_len=105)  # files of 60..200 bytes: some are padded
    batch = task.batch("train", 2, 6)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (6, 2, 105) and ids.dtype == torch.long
    assert mask.dtype == torch.bool and batch["labels"].shape == (6,)
    assert (ids[..., 0] == CLS_ID).all() and mask[..., 0].all()
    assert (ids[~mask] == PAD_ID).all() and (
        ids[mask][ids[mask] != CLS_ID] >= FIRST_SYMBOL_ID
    ).all()
    assert ids.max() < task.vocab_size == 258
    lengths = task.document_lengths("train")
    assert lengths.min() < 100 and lengths.max() == 100
    rows = task._train_rows(np.arange(12, 18))
    torch.testing.assert_close(mask.sum(-1), torch.from_numpy(lengths[rows] + 1))


def test_evaluate_with_a_pair_model(tmp_path, corpus) -> None:
    task = make(tmp_path)
    model_cfg = {
        "kind": "encoder",
        "vocab_size": 258,
        "dim": 16,
        "depth": 1,
        "num_heads": 2,
        "max_seq_len": DOC_LEN + 1,
        "head": {"kind": "pair_classifier", "num_classes": 2, "pooling": "mean"},
    }
    task.check_model(fl.load_config({"model": model_cfg, "task": task.config.to_dict()}).model)
    model = fl.build_model(model_cfg)
    loss, count = task.loss(model, task.batch("train", 0, 4))
    assert count == 4 and torch.isfinite(loss)
    metrics = task.evaluate(model, 8)
    assert set(metrics) == {"val_loss", "accuracy", "majority_baseline"}
    assert metrics["majority_baseline"] == 0.5


def model_cfg(**changes: object):
    base = {
        "kind": "encoder",
        "vocab_size": 258,
        "dim": 16,
        "num_heads": 2,
        "max_seq_len": DOC_LEN + 1,
        "head": {"kind": "pair_classifier", "num_classes": 2},
    }
    return fl.build_model({**base, **changes}).config


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"head": {"kind": "classifier"}},
            r"model\.head\.kind: 'classifier' cannot train task 'retrieval'",
        ),
        (
            {"head": {"kind": "pair_classifier", "num_classes": 3}},
            r"model\.head\.num_classes: invalid value 3",
        ),
        ({"vocab_size": 257}, r"model\.vocab_size: 257 is smaller"),
        ({"max_seq_len": DOC_LEN}, r"model\.max_seq_len"),
    ],
)
def test_check_model(tmp_path, corpus, changes, match) -> None:
    task = make(tmp_path)
    task.check_model(model_cfg())
    with pytest.raises(ConfigError, match=match):
        task.check_model(model_cfg(**changes))


def test_a_decoder_cannot_train_it(tmp_path, corpus) -> None:
    cfg = fl.build_model(
        {"kind": "decoder_lm", "vocab_size": 258, "dim": 16, "num_heads": 2}
    ).config
    with pytest.raises(
        ConfigError, match=r"model\.kind: 'decoder_lm' cannot train task 'retrieval'"
    ):
        make(tmp_path).check_model(cfg)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"doc_len": 0}, r"task\.doc_len: invalid value 0; allowed: >= 1"),
        (
            {"seq_len": DOC_LEN, "doc_len": DOC_LEN},
            r"task\.seq_len: invalid value 40; .* allowed: >= 41",
        ),
        ({"val_file_fraction": 0.0}, r"task\.val_file_fraction: invalid value 0\.0; allowed: 0 <"),
        ({"test_file_fraction": 1.0}, r"task\.test_file_fraction: invalid value 1\.0"),
        (
            {"val_file_fraction": 0.5, "test_file_fraction": 0.5},
            r"task\.test_file_fraction: invalid value 0\.5; with val_file_fraction=0\.5",
        ),
        ({"min_file_bytes": 0}, r"task\.min_file_bytes: invalid value 0"),
        ({"root": " "}, r"task\.root: invalid value ' '; allowed: null or a folder"),
        ({"window": "middle"}, r"task\.window"),
    ],
)
def test_config_errors(fields, match) -> None:
    with pytest.raises(ConfigError, match=match):
        fl.load_config({"model": "gpt-small-cpu", "task": {"kind": "retrieval", **fields}})


def test_data_errors(tmp_path, corpus) -> None:
    with pytest.raises(DataError, match=r"task\.root: .* is not a folder"):
        make(tmp_path / "missing")
    # 10% of 5..7 files rounds to 0 or 1 per package: no val package has two files
    with pytest.raises(DataError, match=r"the val split needs a package with two files"):
        make(tmp_path, val_file_fraction=0.1)


def test_stdlib_is_the_default_corpus() -> None:
    task = TASK.build({"kind": "retrieval", "train_size": 20, "val_size": 10, "test_size": 10})
    info = task.data_info()
    assert info["files_skipped"]["top_level_modules"] > 0 and info["vocab_size"] == 258
    assert all(n.count("/") >= 1 and "/test/" not in f"/{n}" for n in task.files)
    assert {"encodings", "email", "json"} <= set(info["package_files_train_val_test"])
    assert task.generation_key()["corpus_sha256"] == info["manifest"]["sha256"]
