"""``listops``: nested list operations, the ListOps task of the Long Range Arena.

Paper: Tay, Dehghani, Abnar, Shen, Bahri, Pham, Rao, Yang, Ruder, Metzler, "Long Range Arena: A
Benchmark for Efficient Transformers", ICLR 2021, arXiv:2011.04006 (ListOps itself: Nangia & Bowman,
2018, arXiv:1804.06028).

An expression is a digit or ``[OP e_1 .. e_n ]`` with OP one of ``MIN``, ``MAX``, ``MED`` (median;
for an even count the mean of the two middle values, rounded down) and ``SM`` (sum modulo 10), e.g.
``[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]`` = 5. The label is its value (10 classes).

Sampling follows LRA's generator: a node at depth ``d`` (the root has depth 1) is an operator with
probability 0.25 when ``d < max_depth`` (always a digit at ``max_depth``); an operator takes 2 ..
``max_args`` arguments (uniform) and is uniform over the four; a digit is uniform over 0..9. An
expression is kept when ``min_length < length < max_length`` (tokens: operators, digits and ``]``)
and it is new: the pool holds distinct expressions, so train, val and test never share one.
:data:`LRA_LISTOPS` / :func:`lra_listops_config` give the paper's sizes (500 < length < 2000, depth
10, 10 arguments, 96K/2K/2K); the default is a CPU-sized set (50 < length < 200, depth 6, 5
arguments; majority class about 14%).

Differences from the paper: the generator is seeded (``data_seed``) and keeps its sampling order, so
data are reproducible (LRA's is not); a sample is abandoned as soon as it is certain to be too long
(same distribution, less work); a CLS token is put in front.

Tokens: as in LRA's input pipeline an operator with its opening bracket (``[MAX``) is one token, so
lengths are LRA's. Symbols 0..9 are the digits, 10..13 ``[MIN [MAX [MED [SM``, 14 ``]``; the task
adds PAD = 0 and CLS = 1 in front (vocab_size 17; see :mod:`formerlab.tasks.classification`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..config import join, param
from ..errors import ConfigError, DataError
from ..registry import TASK
from .classification import ClassificationTask, ClassificationTaskConfig, Examples, check_min

OPERATORS = ("MIN", "MAX", "MED", "SM")
SYMBOLS = (*(str(d) for d in range(10)), *(f"[{op}" for op in OPERATORS), "]")
FIRST_OPERATOR = 10
CLOSE = 14
#: probability that a node above the maximum depth is an operator (LRA's VALUE_P = 0.25)
OPERATOR_P = 0.25

#: the LRA paper's ListOps: lengths 501..1999 tokens, 96K / 2K / 2K examples
LRA_LISTOPS: dict[str, Any] = {
    "kind": "listops",
    "seq_len": 2000,
    "min_length": 500,
    "max_length": 2000,
    "max_depth": 10,
    "max_args": 10,
    "train_size": 96_000,
    "val_size": 2_000,
    "test_size": 2_000,
}


def apply_operator(op: str, args: Sequence[int]) -> int:
    """The value of ``op`` (MIN, MAX, MED, SM) over digit arguments."""
    if not args:
        raise DataError(f"listops: {op} has no arguments")
    if op == "MIN":
        return min(args)
    if op == "MAX":
        return max(args)
    if op == "SM":
        return sum(args) % 10
    if op == "MED":
        s, n = sorted(args), len(args)
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2
    raise DataError(f"listops: unknown operator {op!r}; allowed: {', '.join(OPERATORS)}")


def split_expression(expression: str | Sequence[str]) -> list[str]:
    """Whitespace tokens; LRA's binary-tree parentheses ``(`` ``)`` are dropped."""
    tokens = expression.split() if isinstance(expression, str) else list(expression)
    return [t for t in tokens if t not in ("(", ")")]


def evaluate_listops(expression: str | Sequence[str]) -> int:
    """The value of a ListOps expression (text or tokens), e.g. ``"[SM 4 [MAX 2 9 ] ]"`` -> 3."""
    stack: list[list[Any]] = [[]]
    for token in split_expression(expression):
        if token.startswith("[") and len(token) > 1:
            stack.append([token[1:]])
        elif token == "]":
            if len(stack) < 2:
                raise DataError(f"listops: unmatched ']' in {expression!r}")
            op, *args = stack.pop()
            stack[-1].append(apply_operator(op, args))
        elif token.isdigit() and len(token) == 1:
            stack[-1].append(int(token))
        else:
            raise DataError(f"listops: invalid token {token!r}; allowed: {' '.join(SYMBOLS)}")
    if len(stack) != 1 or len(stack[0]) != 1:
        raise DataError(f"listops: {expression!r} is not exactly one complete expression")
    return stack[0][0]


def encode_listops(expression: str | Sequence[str]) -> np.ndarray:
    """Symbol ids (0..14) of an expression's tokens."""
    index = {s: i for i, s in enumerate(SYMBOLS)}
    tokens = split_expression(expression)
    bad = [t for t in tokens if t not in index]
    if bad:
        raise DataError(f"listops: invalid token {bad[0]!r}; allowed: {' '.join(SYMBOLS)}")
    return np.array([index[t] for t in tokens], dtype=np.uint8)


def decode_listops(symbols: Sequence[int] | np.ndarray) -> str:
    """The text of symbol ids (0..14)."""
    return " ".join(SYMBOLS[int(s)] for s in symbols)


class _TooLong(Exception):
    """Raised inside :func:`sample_expression` once the sample must reach ``max_length``."""


def sample_expression(
    rng: random.Random, max_depth: int, max_args: int, max_length: int
) -> tuple[list[int], int] | None:
    """One expression drawn by the LRA grammar: (symbol ids, value), or None if it would have
    ``max_length`` tokens or more (abandoned as soon as that is certain)."""
    out: list[int] = []

    def node(depth: int) -> int:
        # this node needs >= 1 token, and each of the depth-1 open operators a closing "]"
        if len(out) + depth >= max_length:
            raise _TooLong
        if depth >= max_depth or rng.random() >= OPERATOR_P:
            out.append(int(rng.random() * 10))
            return out[-1]
        n_args = 2 + int(rng.random() * (max_args - 1))
        op = int(rng.random() * len(OPERATORS))
        out.append(FIRST_OPERATOR + op)
        args = [node(depth + 1) for _ in range(n_args)]
        out.append(CLOSE)
        return apply_operator(OPERATORS[op], args)

    try:
        value = node(1)
    except _TooLong:
        return None
    return out, value


def max_expression_length(max_depth: int, max_args: int) -> int:
    """The longest expression the grammar can produce (tokens)."""
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def nesting_depths(ex: Examples) -> np.ndarray:
    """Deepest operator nesting of each example (0 for a bare digit)."""
    step = np.zeros(len(SYMBOLS), dtype=np.int64)
    step[FIRST_OPERATOR:CLOSE], step[CLOSE] = 1, -1
    level = np.cumsum(step[ex.symbols])  # balanced expressions return to 0 at every boundary
    starts = ex.offsets[:-1]
    return np.maximum.reduceat(level, starts) if len(level) else np.zeros(len(ex), np.int64)


@dataclass(kw_only=True)
class ListOpsConfig(ClassificationTaskConfig):
    """ListOps expressions by LRA's grammar; the label is the value (10 classes)."""

    kind: ClassVar[str] = "listops"
    seq_len: int = param(200, doc="tokens per example (CLS + expression + PAD); >= max_length")
    min_length: int = param(50, doc="keep expressions longer than this many tokens")
    max_length: int = param(200, doc="keep expressions shorter than this many tokens")
    max_depth: int = param(6, doc="nodes at this depth are digits (the root is depth 1)")
    max_args: int = param(5, doc="most arguments of an operator (at least 2)")
    train_size: int = param(20_000, doc="training examples")

    def validate(self, path: str = "") -> None:
        super().validate(path)
        check_min(path, "min_length", self.min_length, 0)
        check_min(path, "max_length", self.max_length, self.min_length + 2)
        check_min(path, "max_depth", self.max_depth, 2)
        check_min(path, "max_args", self.max_args, 2)
        longest = max_expression_length(self.max_depth, self.max_args)
        if longest <= self.min_length:
            raise ConfigError(
                f"{join(path, 'min_length')}: invalid value {self.min_length!r}; the longest "
                f"expression with max_depth={self.max_depth}, max_args={self.max_args} has "
                f"{longest} tokens; allowed: < {longest}"
            )
        check_min(path, "seq_len", self.seq_len, self.max_length)


def lra_listops_config(**changes: Any) -> ListOpsConfig:
    """The LRA paper's ListOps configuration (:data:`LRA_LISTOPS`), with ``changes`` applied."""
    return ListOpsConfig.from_dict({**LRA_LISTOPS, **changes})


@TASK.register(ListOpsConfig)
class ListOpsTask(ClassificationTask):
    """ListOps (LRA): classify the value 0..9 of a nested MIN/MAX/MED/SM expression."""

    paper = (
        "Tay et al., 2021, Long Range Arena: A Benchmark for Efficient Transformers, "
        "arXiv:2011.04006"
    )
    config: ListOpsConfig
    num_classes = 10
    num_symbols = len(SYMBOLS)

    def generate(self, total: int, rng: np.random.Generator) -> Examples:
        cfg = self.config
        sampler = random.Random(int(rng.integers(1 << 62)))
        seen: set[bytes] = set()
        sequences, labels = [], []
        attempts, limit = 0, 1000 * total + 100_000
        while len(sequences) < total:
            if attempts == limit:
                raise DataError(
                    f"task 'listops': only {len(sequences)} of {total} distinct expressions with "
                    f"{cfg.min_length} < length < {cfg.max_length} in {limit} samples; widen the "
                    "length range, raise max_depth/max_args or ask for fewer examples"
                )
            attempts += 1
            drawn = sample_expression(sampler, cfg.max_depth, cfg.max_args, cfg.max_length)
            if drawn is None or len(drawn[0]) <= cfg.min_length:
                continue
            key = bytes(drawn[0])
            if key not in seen:
                seen.add(key)
                sequences.append(np.frombuffer(key, dtype=np.uint8))
                labels.append(drawn[1])
        return Examples.from_sequences(sequences, labels)

    def text(self, split: str, index: int) -> str:
        """Example ``index`` of ``split`` as ListOps text."""
        return decode_listops(self.splits[split].sequence(index))

    def extra_info(self) -> dict[str, Any]:
        depths = nesting_depths(self.pool)
        cfg = self.config
        return {
            "grammar": {
                k: getattr(cfg, k) for k in ("min_length", "max_length", "max_depth", "max_args")
            },
            "mean_nesting_depth": float(depths.mean()),
            "max_nesting_depth": int(depths.max()),
            "symbols": list(SYMBOLS),
        }
