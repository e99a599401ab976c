"""Claim checks: one per paper, each reproducing its headline claim at small scale (DESIGN §6).

Each paper's check lives in its own module here (``claims/<key>.py``) and is imported below so that
registering happens on import. The framework is in :mod:`.base` (the contract) and :mod:`.runner`.
"""

from . import (  # noqa: F401  (registers the checks)
    algoformer,
    crmsnorm,
    dsformer,
    faster_lighter,
    fit,
    greenformers,
    lipschitz,
    lra,
    matformer,
    peri_ln,
    primer,
    quantizable,
    tokenformer,
    wide_attention,
    zaya1,
)
from .base import BUDGETS, ClaimCheck, ClaimConfig, Inconclusive
from .runner import DEFAULT_RESULTS_DIR, RESULT_KEYS, get_check, list_claims, run_claim, run_claims

__all__ = [
    "BUDGETS",
    "DEFAULT_RESULTS_DIR",
    "RESULT_KEYS",
    "ClaimCheck",
    "ClaimConfig",
    "Inconclusive",
    "get_check",
    "list_claims",
    "run_claim",
    "run_claims",
]
