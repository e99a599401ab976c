"""text_classification: fortune-file parsing (separators, Latin-1 fallback), labels by package and
by file, class selection, balancing, stratified and seeded splits, truncation, deduplication, the
cache and its source fingerprint, missing-data and config errors, and the shipped run file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import formerlab as fl
from formerlab.errors import ConfigError, DataError
from formerlab.registry import TASK
from formerlab.tasks import text_classification as tc
from formerlab.tasks.text_classification import (
    TextClassificationConfig,
    TextClassificationTask,
    split_fortunes,
    stratified_order,
)
from formerlab.train import train

REPO = Path(__file__).resolve().parents[2]


def fortune_file(texts: list[str]) -> bytes:
    return ("\n%\n".join(texts) + "\n%\n").encode("utf-8")


def write(root: Path, package: str, name: str, data: bytes) -> Path:
    path = root / package / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """English topics alpha (30 texts), beta (20), gamma (12, in fortunes-min); German (25 texts)."""
    root = tmp_path / "fortunes"
    write(root, "fortunes", "alpha", fortune_file([f"EN alpha text {i}" for i in range(30)]))
    write(root, "fortunes", "beta", fortune_file([f"EN beta text {i} ok" for i in range(20)]))
    write(root, "fortunes", "alpha.dat", b"index bytes that are no fortunes")
    (root / "fortunes" / "alias").symlink_to(root / "fortunes" / "alpha")  # skipped, not a topic
    write(root, "fortunes-min", "gamma", fortune_file([f"EN gamma {i}" for i in range(12)]))
    write(root, "fortunes-de", "sub/witze", fortune_file([f"DE Witz Nr. {i}" for i in range(25)]))
    return root


def make(root: Path, seed: int = 0, **fields: object) -> TextClassificationTask:
    cfg = {
        "kind": "text_classification",
        "root": str(root),
        "classes": ["en", "de"],
        "min_examples_per_class": 1,
        "seq_len": 32,
        "train_size": 30,
        "val_size": 10,
        "test_size": 10,
        "eval_batches": 2,
        **fields,
    }
    return TASK.build(cfg, seed=seed)


def texts_of(task: TextClassificationTask, split: str) -> list[str]:
    return [task.text(split, i) for i in range(len(task.splits[split]))]


# -- parsing ---------------------------------------------------------------------------------------


def test_split_fortunes_on_percent_lines() -> None:
    data = b"%\none\n%\n\n  two\n lines \n%\n%  \nthree\r\n%\r\nfour\n%"
    assert split_fortunes(data) == [b"one", b"two\n lines", b"three", b"four"]
    assert split_fortunes(b"a 100% sure\n%\nb") == [b"a 100% sure", b"b"]
    assert split_fortunes(b"\n%\n \n%\n") == []


def test_latin1_fallback_gives_utf8_bytes() -> None:
    assert split_fortunes(b"caf\xe9\n%\nna\xefve") == ["café".encode(), "naïve".encode()]
    assert split_fortunes("café\n%\nЖ".encode()) == ["café".encode(), "Ж".encode()]


def test_latin1_file_in_the_corpus(corpus: Path) -> None:
    write(corpus, "fortunes-de", "alt", b"DE M\xfcnchen ist sch\xf6n\n%\n")
    task = make(corpus, train_size=40, val_size=5, test_size=5)
    pool = [task.pool.sequence(i).tobytes() for i in range(len(task.pool))]
    assert "DE München ist schön".encode() in pool


# -- labels ----------------------------------------------------------------------------------------


def test_language_label_is_the_package_language(corpus: Path) -> None:
    task = make(corpus)
    assert task.classes == ["en", "de"] and task.num_classes == 2 and task.vocab_size == 258
    for split in task.splits:
        for text, label in zip(texts_of(task, split), task.splits[split].labels, strict=True):
            assert text[:2] == ["EN", "DE"][label], (split, text)


def test_both_english_packages_feed_en(corpus: Path) -> None:
    task = make(corpus, balance=False, train_size=67, val_size=10, test_size=10)
    english = [t for s in task.splits for t in texts_of(task, s) if t.startswith("EN")]
    assert sum("gamma" in t for t in english) == 12 and len(english) == 62


def test_topic_label_is_the_file_name_and_rare_topics_are_dropped(corpus: Path) -> None:
    task = make(
        corpus,
        dataset="topic",
        classes=None,
        min_examples_per_class=15,
        train_size=20,
    )
    assert task.classes == ["alpha", "beta"]  # sorted; gamma has 12 < 15 texts
    info = task.data_info()
    assert info["dropped_classes"] == {"gamma": 12}
    assert info["class_sizes"] == {"alpha": 30, "beta": 20}
    for split in task.splits:
        for text, label in zip(texts_of(task, split), task.splits[split].labels, strict=True):
            assert task.classes[label] in text


def test_explicit_classes_set_the_label_order_and_ignore_the_minimum(corpus: Path) -> None:
    task = make(
        corpus,
        dataset="topic",
        classes=["gamma", "alpha"],
        min_examples_per_class=99,
        train_size=14,
        val_size=5,
        test_size=5,
    )
    assert task.classes == ["gamma", "alpha"]
    labels = np.concatenate([task.splits[s].labels for s in task.splits])
    texts = [t for s in task.splits for t in texts_of(task, s)]
    assert all(("gamma" in t) == (lab == 0) for t, lab in zip(texts, labels, strict=True))


def test_language_subset_needs_only_its_packages(corpus: Path) -> None:
    task = make(corpus, classes=["de", "en"], train_size=20)
    assert task.classes == ["de", "en"]
    assert {t[:2] for t in texts_of(task, "train")} == {"DE", "EN"}


# -- balance, stratification, determinism ------------------------------------------------------------


def test_balance_caps_every_class_at_the_smallest(corpus: Path) -> None:
    task = make(corpus, train_size=30, val_size=10, test_size=10)  # 62 en, 25 de -> 25 each
    counts = {s: np.bincount(task.splits[s].labels, minlength=2).tolist() for s in task.splits}
    assert counts == {"train": [15, 15], "val": [5, 5], "test": [5, 5]}
    assert task.majority_baseline("val") == 0.5
    with pytest.raises(DataError, match=r"= 51 examples, but the pool holds 50 .*25 each"):
        make(corpus, train_size=31)


def test_unbalanced_pool_keeps_the_class_proportions_in_every_split(corpus: Path) -> None:
    task = make(corpus, balance=False, train_size=58, val_size=15, test_size=14)  # all 87
    for split, n in (("train", 58), ("val", 15), ("test", 14)):
        de = int(np.sum(task.splits[split].labels == 1))
        assert abs(de - n * 25 / 87) <= 1, (split, de)
    assert task.majority_class == 0


def test_stratified_order_round_robin_cap_and_proportions() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [4, 4, 4])
    order = stratified_order(labels, rng)
    assert labels[order].tolist() == [0, 1, 2] * 4 and sorted(order) == list(range(12))
    capped = stratified_order(np.repeat([0, 1], [10, 3]), rng, cap=3)
    assert np.repeat([0, 1], [10, 3])[capped].tolist() == [0, 1] * 3
    skewed = np.repeat([0, 1], [30, 10])
    order = stratified_order(skewed, rng)
    for stop in range(4, 41, 4):
        assert abs(int(np.sum(skewed[order[:stop]] == 1)) - stop / 4) <= 1
    again = stratified_order(skewed, np.random.default_rng(0))
    assert not np.array_equal(again, stratified_order(skewed, np.random.default_rng(1)))


def test_deterministic_by_data_seed_not_training_seed(corpus: Path) -> None:
    a, b = make(corpus, cache=False), make(corpus, seed=3, cache=False)
    c = make(corpus, data_seed=1, cache=False)
    assert a.pool.sha256() == b.pool.sha256() != c.pool.sha256()


def test_splits_are_disjoint_and_duplicates_and_conflicts_dropped(corpus: Path) -> None:
    write(corpus, "fortunes", "delta", fortune_file(["EN alpha text 3", "EN shared", "EN shared"]))
    write(corpus, "fortunes-de", "more", fortune_file(["EN shared", "DE once"]))
    task = make(corpus, balance=False, train_size=60, val_size=14, test_size=14)  # 62 + 26
    pool = [task.pool.sequence(i).tobytes() for i in range(len(task.pool))]
    assert len(set(pool)) == len(pool)
    assert b"EN shared" not in pool  # under both en and de
    corpus_stats = task.data_info()["corpus"]
    assert corpus_stats["duplicates"] == 1 and corpus_stats["conflicts"] == 3
    assert task.class_sizes() == {"en": 62, "de": 26}


# -- truncation and length filters -------------------------------------------------------------------


def test_texts_are_cut_to_seq_len_minus_one_bytes(tmp_path: Path) -> None:
    en = [f"{i:02d}EN " + "x" * 20 for i in range(10)]  # 25 bytes each
    de = [f"{i:02d}DE " + "y" * i for i in range(10)]  # 5 + i bytes: cut from i = 3 on
    write(tmp_path, "fortunes", "a", fortune_file(en))
    write(tmp_path, "fortunes-min", "b", fortune_file(["99EN short"]))  # 10 bytes, cut
    write(tmp_path, "fortunes-min", "c", b"%\n")  # no text at all
    write(tmp_path, "fortunes-de", "d", fortune_file(de))
    task = make(tmp_path, seq_len=8, train_size=14, val_size=3, test_size=3)
    assert int(task.pool.lengths.max()) == 7
    sources = [t.strip().encode() for t in [*en, "99EN short", *de]]
    for i in range(len(task.pool)):
        seq = task.pool.sequence(i).tobytes()
        assert any(s[:7] == seq for s in sources), seq
    pool = {task.pool.sequence(i).tobytes() for i in range(len(task.pool))}
    assert {b"01DE y", b"03DE yy", b"09DE yy", b"00DE"} <= pool  # short ones whole, others cut
    batch = task.batch("val", 0, 3)
    assert batch["input_ids"].shape == (3, 8)
    info = task.data_info()
    assert info["cut_to_bytes"] == 7 and info["corpus"]["truncated"] == 10 + 1 + 7


def test_cut_texts_that_collide_are_deduplicated(corpus: Path) -> None:
    task = make(corpus, seq_len=10, balance=False, train_size=2, val_size=1, test_size=1)
    # cut to 9 bytes: "EN alpha ", "EN beta t", "EN gamma ", "DE Witz N" are all that is left
    assert task.class_sizes() == {"en": 3, "de": 1}
    assert task.data_info()["corpus"]["duplicates"] == 29 + 19 + 11 + 24


def test_min_and_max_bytes_filter_before_the_cut(corpus: Path) -> None:
    # bytes: "EN alpha text 0" 15, "... 10" 16; "EN beta text 0 ok" 17+; "EN gamma 0" 10, "... 10" 11;
    # "DE Witz Nr. 0" 13, "... 10" 14
    task = make(
        corpus,
        min_bytes=10,
        max_bytes=15,
        balance=False,
        train_size=30,
        val_size=8,
        test_size=9,
    )
    assert task.class_sizes() == {"en": 10 + 12, "de": 25}
    stats = task.data_info()["corpus"]
    assert stats["filtered"] == 20 + 20 and stats["texts"] == 87
    assert stats["truncated"] == 0


# -- cache and fingerprint ---------------------------------------------------------------------------


def test_cache_hit_on_second_build(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make(corpus)
    assert not first.cache_hit

    def fail(*args: object) -> None:
        raise AssertionError("generated again")

    monkeypatch.setattr(TextClassificationTask, "generate", fail)
    again = make(corpus, eval_batches=5)
    assert again.cache_hit and again.pool.sha256() == first.pool.sha256()


def test_changed_source_file_or_seq_len_gives_a_new_cache_key(corpus: Path) -> None:
    first = make(corpus)
    assert make(corpus, seq_len=33).cache_path() != first.cache_path()
    path = corpus / "fortunes-de" / "sub" / "witze"
    path.write_bytes(path.read_bytes().replace(b"Nr. 3\n", b"Nummer 3\n"))
    changed = make(corpus)
    assert changed.cache_path() != first.cache_path() and not changed.cache_hit
    assert "DE Witz Nummer 3" in [t for s in changed.splits for t in texts_of(changed, s)]


# -- errors ------------------------------------------------------------------------------------------


def test_missing_package_folder_names_it(corpus: Path) -> None:
    with pytest.raises(DataError, match=r"task.root: .* no fortune files for fortunes-ru"):
        make(corpus, classes=["en", "ru"])


def test_missing_debian_packages_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(args: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(args, 1, "", f"package '{args[-1]}' is not installed")

    monkeypatch.setattr(tc.subprocess, "run", not_installed)
    with pytest.raises(DataError, match=r"apt-get install -y fortunes-de fortunes-ru"):
        TASK.build({"kind": "text_classification", "classes": ["de", "ru"]})

    def no_dpkg(args: list[str], **kwargs: object) -> None:
        raise FileNotFoundError("dpkg")

    monkeypatch.setattr(tc.subprocess, "run", no_dpkg)
    with pytest.raises(DataError, match=r"apt-get install -y fortunes fortunes-min"):
        TASK.build({"kind": "text_classification", "dataset": "topic"})


def test_dpkg_listing_gives_the_files_of_each_package(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = corpus.parent / "games" / "fortunes"  # both packages install into one folder
    shared.mkdir(parents=True)
    owned = {
        "fortunes": ["alpha", "alpha.dat", "alias"],
        "fortunes-min": ["gamma"],
        "fortunes-de": ["witze", "witze.u8"],
    }
    for package, names in owned.items():
        for name in names:
            source = corpus / package / ("sub/witze" if name.startswith("witze") else name)
            target = shared / name
            if name == "alias" or name.endswith(".u8"):
                target.symlink_to(source)
            elif not target.exists():
                target.write_bytes(source.read_bytes())
    outside = corpus.parent / "elsewhere"
    outside.write_bytes(fortune_file(["EN not a fortune file"]))

    def dpkg(args: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        assert args[:2] == ["dpkg", "-L"]
        paths = [str(shared), str(outside), *(str(shared / n) for n in owned[args[2]])]
        return subprocess.CompletedProcess(args, 0, "\n".join(paths) + "\n", "")

    monkeypatch.setattr(tc, "FORTUNE_DIR", str(shared) + "/")
    monkeypatch.setattr(tc.subprocess, "run", dpkg)
    files = tc.package_files(["fortunes", "fortunes-de"], None)
    assert files == {"fortunes": [shared / "alpha"], "fortunes-de": [shared / "witze"]}
    task = TASK.build(
        {
            "kind": "text_classification",
            "classes": ["en", "de"],
            "min_examples_per_class": 1,
            "seq_len": 32,
            "train_size": 30,
            "val_size": 10,
            "test_size": 10,
        }
    )
    assert task.class_sizes() == {"en": 42, "de": 25} and task.data_info()["source"] == "dpkg"


def test_unknown_topic_and_too_few_classes_are_data_errors(corpus: Path) -> None:
    with pytest.raises(DataError, match=r"task.classes: 'zeta' has no texts .*alpha, beta, gamma"):
        make(corpus, dataset="topic", classes=["alpha", "zeta"])
    with pytest.raises(DataError, match=r"task.min_examples_per_class: 21 leaves 1 class"):
        make(corpus, dataset="topic", classes=None, min_examples_per_class=21)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"dataset": "news"},
            r"task.dataset: invalid value 'news'; allowed: 'language' \| 'topic'",
        ),
        ({"classes": ["en"]}, r"task.classes: invalid value \['en'\]; allowed: null or 2 or more"),
        ({"classes": ["en", "en"]}, r"task.classes: invalid value"),
        ({"classes": ["en", "fr"]}, r"task.classes: invalid value 'fr'; allowed: en, de, es"),
        ({"min_examples_per_class": 0}, r"task.min_examples_per_class: invalid value 0"),
        ({"min_bytes": 0}, r"task.min_bytes: invalid value 0; allowed: >= 1"),
        (
            {"min_bytes": 5, "max_bytes": 4},
            r"task.max_bytes: invalid value 4; allowed: null or >= 5",
        ),
        ({"seq_len": 1}, r"task.seq_len: invalid value 1; allowed: >= 2"),
        ({"root": " "}, r"task.root: invalid value ' '; allowed: null or a folder"),
    ],
)
def test_config_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TextClassificationConfig.from_dict(fields, "task")


# -- the run file and the real corpus ----------------------------------------------------------------


def test_text_tiny_run_file_trains_on_fixture_files(corpus: Path, tmp_path: Path) -> None:
    path = REPO / "configs" / "repro" / "lra" / "text-tiny.yaml"
    run = fl.load_config(path)
    assert run.task.kind == "text_classification" and run.model.head.num_classes == 8
    small = [
        f"task.root={corpus}",
        "task.classes=[en, de]",
        "task.min_examples_per_class=1",
        "model.head.num_classes=2",
        "task.train_size=30",
        "task.val_size=10",
        "task.test_size=10",
        "task.eval_batches=2",
        "train.steps=3",
        "train.threads=1",
        "train.batch_size=4",
        "train.schedule.warmup_steps=1",
        "train.eval_every=0",
        "train.checkpoint_every=0",
    ]
    summary = train(fl.load_config(path, small), tmp_path / "run", progress=False)
    assert summary["final_step"] == 3 and summary["data"]["classes"] == ["en", "de"]
    assert {"accuracy", "majority_baseline"} <= set(summary["val"])


def installed(package: str) -> bool:
    try:
        return subprocess.run(["dpkg", "-s", package], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


LANGUAGE_PACKAGES = [p for ps in tc.LANGUAGE_PACKAGES.values() for p in ps]


@pytest.mark.skipif(
    not all(installed(p) for p in LANGUAGE_PACKAGES),
    reason="needs the Debian fortunes packages: apt-get install -y " + " ".join(LANGUAGE_PACKAGES),
)
def test_real_fortunes_by_language_and_topic() -> None:
    task = TASK.build(
        {"kind": "text_classification", "train_size": 800, "val_size": 80, "test_size": 80}
    )
    assert task.classes == list(tc.LANGUAGE_PACKAGES)
    sizes = task.class_sizes()
    assert min(sizes.values()) == sizes["pt"] > 2000  # fortunes-br is the smallest
    ru = task.splits["train"].labels == task.classes.index("ru")
    cyrillic = [bool(set(task.splits["train"].sequence(i)) & {0xD0, 0xD1}) for i in range(800)]
    assert np.mean(np.array(cyrillic)[ru]) > 0.95 and np.mean(np.array(cyrillic)[~ru]) < 0.05
    topic = TASK.build(
        {
            "kind": "text_classification",
            "dataset": "topic",
            "train_size": 400,
            "val_size": 40,
            "test_size": 40,
        }
    )
    assert {"people", "computers", "literature"} <= set(topic.classes)
    assert "pratchett" in topic.data_info()["dropped_classes"]
    assert all(n >= 200 for n in topic.class_sizes().values())
