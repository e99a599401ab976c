"""The shared LM rules: split by file / by bytes, manifest hashing, unigram entropy."""

from __future__ import annotations

import hashlib
import math

import pytest

from formerlab.tasks.lm import (
    Document,
    manifest,
    name_fraction,
    split_by_bytes,
    split_by_file,
    stream_dtype,
    unigram_entropy_bits,
)

NAMES = [f"pkg/mod_{i}.py" for i in range(400)]


def docs(names: list[str]) -> list[Document]:
    return [Document(n, n.encode() * 3) for n in names]


def test_name_fraction_is_the_sha256_prefix() -> None:
    digest = hashlib.sha256(b"a/b.py").hexdigest()
    assert name_fraction("a/b.py") == int(digest[:16], 16) / 16**16
    assert all(0.0 <= name_fraction(n) < 1.0 for n in NAMES)


@pytest.mark.parametrize("val_fraction", [0.05, 0.2, 0.5])
def test_split_by_file_follows_the_hash_rule(val_fraction: float) -> None:
    split = split_by_file(docs(NAMES), val_fraction)
    val = [d.name for d in split["val"]]
    train = [d.name for d in split["train"]]
    assert not set(val) & set(train)
    assert sorted(val + train) == sorted(NAMES)
    assert val == [n for n in NAMES if name_fraction(n) < val_fraction]  # order kept
    assert abs(len(val) / len(NAMES) - val_fraction) < 0.06


def test_split_by_file_never_leaves_a_split_empty() -> None:
    few = ["a.py", "b.py", "c.py"]
    ranked = sorted(few, key=name_fraction)
    tiny = split_by_file(docs(few), 1e-12)
    assert [d.name for d in tiny["val"]] == [ranked[0]]
    huge = split_by_file(docs(few), 1 - 1e-12)
    assert [d.name for d in huge["train"]] == [ranked[-1]]


def test_split_fallback_prefers_non_empty_documents() -> None:
    ranked = sorted(["a.py", "b.py", "c.py"], key=name_fraction)
    corpus = [Document(ranked[0], b""), Document(ranked[1], b"x"), Document(ranked[2], b"y")]
    assert [d.name for d in split_by_file(corpus, 1e-12)["val"]] == [ranked[1]]


def test_split_by_bytes_takes_the_tail_without_breaking_utf8() -> None:
    data = b"abcdefghij" * 10
    split = split_by_bytes(Document("f.txt", data), 0.25)
    assert split["train"][0].data == data[:75]
    assert split["val"][0].data == data[75:]
    text = ("x" * 8 + "\u20ac").encode()  # 8 + 3 bytes; a cut at 10 lands inside the euro sign
    cut = split_by_bytes(Document("e.txt", text), 0.1)
    assert cut["train"][0].data + cut["val"][0].data == text
    assert cut["train"][0].data.decode() == "x" * 8 + "\u20ac"


def test_manifest_hashes_each_file_and_the_list() -> None:
    corpus = [Document("a.py", b"print(1)\n"), Document("b/c.py", b"")]
    m = manifest(corpus)
    assert [f["path"] for f in m["files"]] == ["a.py", "b/c.py"]
    assert m["files"][0]["sha256"] == hashlib.sha256(b"print(1)\n").hexdigest()
    assert m["files"][1]["bytes"] == 0
    listing = "".join(f"{hashlib.sha256(d.data).hexdigest()}  {d.name}\n" for d in corpus)
    assert m["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert manifest([Document("a.py", b"print(2)\n"), corpus[1]])["sha256"] != m["sha256"]


def test_unigram_entropy_bits() -> None:
    assert unigram_entropy_bits([Document("a", b"abab"), Document("b", b"ba")]) == 1.0
    assert unigram_entropy_bits([Document("u", bytes(range(256)) * 2)]) == 8.0
    assert unigram_entropy_bits([Document("z", b"zzzz")]) == 0.0
    skewed = unigram_entropy_bits([Document("s", b"aaab")])
    assert math.isclose(skewed, -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def test_stream_dtype_fits_the_vocabulary() -> None:
    assert stream_dtype(256).__name__ == "uint8"
    assert stream_dtype(257).__name__ == "uint16"
    assert stream_dtype(70_000).__name__ == "int32"
