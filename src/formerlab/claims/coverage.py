"""Papers whose techniques are partly in formerlab but have no registered claim check yet.

``formerlab claims list`` shows them with coverage ``partial`` so nobody mistakes a technique that
exists for a claim that was checked. An entry leaves this table when its paper's check is
registered (a registered check states what it still misses in ``ClaimCheck.missing``).
"""

from __future__ import annotations

#: key -> (paper title, year, what exists and what is missing)
PARTIAL: dict[str, tuple[str, int, str]] = {
    "axformer": (
        "AxFormer: Accuracy-driven Approximation of Transformers for Faster, Smaller and more "
        "Accurate NLP Models",
        2020,
        "selective hard attention (hard_topk) exists; the accuracy-driven pruning and the check "
        "do not yet",
    ),
    "budget_longformer": (
        "BudgetLongformer: Can we Cheaply Pretrain a SotA Legal Language Model From Scratch?",
        2022,
        "longformer attention exists; the ELECTRA-style pretraining and the check do not yet",
    ),
}
