"""The claim-check contract: one paper's headline claim, its measurement and its negative control.

A check is a :class:`ClaimCheck` subclass registered in the ``claim`` group under its config's
``kind`` (the paper key)::

    @dataclass(kw_only=True)
    class RopeClaimConfig(ClaimConfig):
        kind: ClassVar[str] = "rope"

    @CLAIM.register(RopeClaimConfig)
    class RopeClaim(ClaimCheck):
        paper = "RoFormer: Enhanced Transformer with Rotary Position Embedding"
        arxiv = "2104.09864"
        year = 2021
        claim = "Rotary attention scores depend only on the relative position."
        metric = "max |score(m, n) - score(m + k, n + k)|"
        paper_value = "exact identity"
        criterion = "max deviation < 1e-10 in float64"
        seeds = {"quick": (0,), "full": (0, 1, 2)}

        def passes(self, value): return value < 1e-10
        def measure(self, variant, budget, seed): ...

``measure(variant, budget, seed)`` returns one number; ``variant`` is ``"claim"`` (the technique as the
paper describes it) or ``"control"`` (a deliberately broken variant that must *fail* the same
criterion, proving the check can fail). The criterion text and :meth:`ClaimCheck.passes` are written
before any result is seen. A check that cannot show the claim at small scale raises
:class:`Inconclusive` with what it measured; it never loosens its criterion.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import KindConfig
from ..errors import ClaimError

BUDGETS = ("quick", "full")
VARIANTS = ("claim", "control")

#: attributes every check must define, with the types they must have
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "paper": str,
    "arxiv": str,
    "year": int,
    "claim": str,
    "metric": str,
    "paper_value": (int, float, str),
    "criterion": str,
    "seeds": dict,
}


@dataclass(kw_only=True)
class ClaimConfig(KindConfig):
    """Config of one claim check; ``kind`` is the paper key (``formerlab claims run KEY``)."""

    group: ClassVar[str] = "claim"


class Inconclusive(Exception):
    """Raised by ``measure`` when the claim cannot be shown at this scale.

    ``value`` is the number that was measured (or None); ``reason`` says why it does not decide.
    """

    def __init__(self, reason: str, value: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value


class ClaimCheck:
    """Base class of registered claim checks (see the module docstring for an example)."""

    paper: ClassVar[str] = ""
    arxiv: ClassVar[str] = ""
    year: ClassVar[int] = 0
    claim: ClassVar[str] = ""
    metric: ClassVar[str] = ""
    paper_value: ClassVar[float | int | str] = ""
    criterion: ClassVar[str] = ""
    #: seeds run per budget: "quick" must fit in 3 minutes on 2 cores, "full" in 15 minutes
    seeds: ClassVar[dict[str, tuple[int, ...]]] = {}
    #: "" when the check covers the paper's claim; otherwise what is still missing (shown as
    #: ``partial`` in ``formerlab claims list``)
    missing: ClassVar[str] = ""

    def __init__(self, cfg: ClaimConfig) -> None:
        self.config = cfg
        self.details: dict[str, Any] = {}

    def note(self, **values: Any) -> None:
        """Record supporting numbers of the current measurement (curves, per-arm losses, ...): the
        runner stores them beside the metric in the result file (``seeds[i]["details"][variant]``)."""
        self.details.update(values)

    @property
    def key(self) -> str:
        return self.config.kind

    def passes(self, value: float) -> bool:
        """Whether ``value`` (the mean over seeds) meets the criterion."""
        raise NotImplementedError

    def measure(self, variant: str, budget: str, seed: int) -> float:
        """Measure the metric for ``variant`` ("claim" | "control") at ``budget`` with ``seed``."""
        raise NotImplementedError

    def check_measure_args(self, variant: str, budget: str, budgets: Iterable[str]) -> None:
        """ClaimError (before any compute) unless ``variant`` is one of :data:`VARIANTS` and
        ``budget`` one of ``budgets`` (the keys of the check's per-budget settings)."""
        budgets = list(budgets)
        if variant not in VARIANTS or budget not in budgets:
            raise ClaimError(
                f"claim {self.key!r}: measure({variant!r}, {budget!r}); allowed variants: "
                f"{', '.join(VARIANTS)}; budgets: {', '.join(budgets)}"
            )

    def seeds_for(self, budget: str) -> list[int]:
        """The seeds of ``budget``; ClaimError if the check does not declare a non-empty list."""
        seeds = self.seeds.get(budget)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ClaimError(
                f"claim {self.key!r}: seeds[{budget!r}] is {seeds!r}; "
                "allowed: a non-empty list of int seeds"
            )
        return list(seeds)

    def check_declaration(self) -> None:
        """Raise ClaimError naming the first missing or mistyped class attribute."""
        for name, kind in _REQUIRED.items():
            value = getattr(self, name, None)
            ok = isinstance(value, kind) and not isinstance(value, bool)
            if not ok or value in ("", {}) or (name == "year" and value < 1900):
                raise ClaimError(
                    f"claim {self.key!r}: {name} is {value!r}; allowed: a non-empty {_names(kind)}"
                )

    def describe(self) -> dict[str, Any]:
        """The paper as it appears in results: title, arXiv id, year."""
        return {"title": self.paper, "arxiv": self.arxiv, "year": self.year}


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " | ".join(k.__name__ for k in kinds)
