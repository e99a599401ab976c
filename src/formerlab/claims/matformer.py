"""``matformer``: submodels cut from one nested model match separately trained models of their size.

Paper: Devvrit, Sneha Kudugunta, Aditya Kusupati, Tim Dettmers, Kaifeng Chen, Inderjit Dhillon,
Yulia Tsvetkov, Hannaneh Hajishirzi, Sham Kakade, Ali Farhadi, Prateek Jain, "MatFormer: Nested
Transformer for Elastic Inference", 2023 (NeurIPS 2024), arXiv:2310.07707. A 2.6B MatLM yields
submodels from 1.5B to 2.6B whose validation loss and one-shot evaluations are comparable to
independently trained models of the same sizes.

The check: a 2-layer, 64-wide byte-level decoder on the ``code_lm`` corpus (FFN ``mlp``, 256 hidden
units). Three models are trained for the same steps on the same batches, from the same seed: a
MatFormer model (``ffn: {kind: matformer, granularities: [0.25, 1.0], mode: sum}``), an ordinary
model with the full FFN (256 units) and an ordinary model with the small FFN (64 units). For every
granularity ``g`` a standalone model is extracted (``matformer_extract``) and scored on the same
validation windows; the metric is the worst excess of its validation loss over the separately
trained model of the same width, in nats per byte (tokens are bytes). The criterion, fixed before
any result was seen: mean over seeds of that worst excess <= :data:`TOLERANCE` = 0.05 nats/byte.

Negative control: naive truncation — the ordinary full model's FFNs cut to their first ``g * 256``
hidden units (the same extraction applied to weights that were never trained nested). It must fail
the same criterion; at ``g = 1`` it is the full model itself, so the small width decides.

Inconclusive: a claim run above the criterion is reported as inconclusive with its per-width losses
(a 2-layer model trained for a few hundred steps on CPU is far from the paper's regime), never as a
pass.

Differences from the paper: two granularities instead of four, 300 (quick) or 600 (full) steps of
batch 16 × 128 bytes instead of billions of tokens, a byte-level code corpus; Mix'n'Match quality,
one-shot downstream evaluations and speculative decoding are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..registry import CLAIM
from ..run_config import RunConfig, load_config
from . import lra
from .base import ClaimCheck, ClaimConfig, Inconclusive

#: the criterion: worst excess validation loss over the same-size separately trained model, nats/byte
TOLERANCE = 0.05
#: optimizer steps per training run of each budget (the same for every model)
STEPS = {"quick": 300, "full": 600}
GRANULARITIES = [0.25, 1.0]
FULL_FFN: dict[str, Any] = {"kind": "mlp", "mult": 4, "activation": "gelu"}

SETUP: dict[str, Any] = {
    "model": {
        "kind": "decoder_lm",
        "vocab_size": 256,
        "dim": 64,
        "depth": 2,
        "num_heads": 4,
        "max_seq_len": 128,
        "ffn": FULL_FFN,
    },
    "task": {"kind": "code_lm", "seq_len": 128, "eval_batches": 32},
    "train": {
        "batch_size": 16,
        "optimizer": {"kind": "adamw", "lr": 3.0e-3, "weight_decay": 0.1},
        "schedule": {"kind": "cosine", "warmup_steps": 30},
    },
}


def ffn_variants() -> dict[str, dict[str, Any]]:
    """The three FFNs trained: nested, ordinary full width, ordinary small width."""
    small = {**FULL_FFN, "mult": FULL_FFN["mult"] * GRANULARITIES[0]}
    nested = {"kind": "matformer", "granularities": GRANULARITIES, "inner": FULL_FFN, "mode": "sum"}
    return {"nested": nested, "full": FULL_FFN, "small": small}


def make_run(ffn: dict[str, Any], steps: int, seed: int) -> RunConfig:
    """The check's run with ``ffn`` as the model's FFN."""
    model = {**SETUP["model"], "ffn": ffn}
    return load_config(
        {**SETUP, "model": model, "train": {**SETUP["train"], "steps": steps, "seed": seed}}
    )


#: a model built from seed ``run.train.seed`` and trained like the trainer does (schedule,
#: clipping, and the parts' :func:`~formerlab.train.trainer.training_passes`)
train_model = lra.train_new_model


def val_loss(task: Any, model: nn.Module, batch_size: int) -> float:
    """Validation loss in nats per token (per byte: the tokenizer is bytes) on the fixed windows."""
    return float(task.evaluate(model, batch_size)["val_loss"])


def truncated(full: nn.Module) -> nn.Module:
    """The ordinary model's weights in a nested model: its submodels are naive truncations."""
    import formerlab

    nested = formerlab.build_model(full.config.replace(ffn=ffn_variants()["nested"]))
    nested.to(next(full.parameters()).dtype)
    nested.load_state_dict(full.state_dict())  # same parameter names and shapes
    return nested.eval()


def excess_losses(
    task: Any, nested: nn.Module, separate: dict[float, nn.Module], batch: int
) -> dict:
    """Per granularity: (extracted submodel's val loss, separate model's val loss)."""
    import formerlab

    out = {}
    for g in GRANULARITIES:
        sub = formerlab.transform(nested, {"kind": "matformer_extract", "fraction": g})
        out[g] = (val_loss(task, sub, batch), val_loss(task, separate[g], batch))
    return out


@dataclass(kw_only=True)
class MatFormerClaimConfig(ClaimConfig):
    """The ``matformer`` claim check (extracted submodels against separately trained ones)."""

    kind: ClassVar[str] = "matformer"


@CLAIM.register(MatFormerClaimConfig)
class MatFormerClaim(ClaimCheck):
    """Extracted MatFormer submodels match same-size separate models; naive truncation must not."""

    paper = "MatFormer: Nested Transformer for Elastic Inference"
    arxiv = "2310.07707"
    year = 2023
    claim = (
        "Submodels extracted from one jointly trained nested (MatFormer) model reach the validation "
        "loss of models of the same size trained separately."
    )
    metric = (
        "max over FFN widths {64, 256} of (val loss of the extracted submodel - val loss of the "
        "separately trained model of that width), nats/byte, 2-layer d=64 code_lm decoder"
    )
    paper_value = (
        "Devvrit et al. 2023: a 2.6B MatLM yields submodels from 1.5B to 2.6B with validation loss "
        "and one-shot evaluations comparable to independently trained counterparts"
    )
    criterion = (
        f"mean over seeds of the worst excess <= {TOLERANCE:g} nats/byte; control (naive "
        "truncation of an ordinary model's FFN hidden units) must fail it"
    )
    seeds = {"quick": (0,), "full": (0, 1, 2)}
    missing = (
        "Mix'n'Match submodel quality (only exact extraction is tested), one-shot downstream "
        "evaluations, speculative decoding with nested drafts, MatViT"
    )

    def __init__(self, cfg: MatFormerClaimConfig) -> None:
        super().__init__(cfg)
        self._trained: dict[tuple[str, str, int], nn.Module] = {}  # claim and control share models

    def passes(self, value: float) -> bool:
        return bool(value <= TOLERANCE)

    def model(self, name: str, budget: str, seed: int, task: Any) -> nn.Module:
        """The trained ``name`` model ("nested" | "full" | "small") of (budget, seed), trained once."""
        key = (name, budget, seed)
        if key not in self._trained:
            run = make_run(ffn_variants()[name], STEPS[budget], seed)
            self._trained[key] = train_model(run, task)
        return self._trained[key]

    def measure(self, variant: str, budget: str, seed: int) -> float:
        self.check_measure_args(variant, budget, STEPS)
        run = make_run(FULL_FFN, STEPS[budget], seed)
        task = lra.load_task(run, seed)
        full = self.model("full", budget, seed, task)
        separate = {GRANULARITIES[0]: self.model("small", budget, seed, task), 1.0: full}
        if variant == "claim":
            nested = self.model("nested", budget, seed, task)
        else:
            nested = truncated(full)
        losses = excess_losses(task, nested, separate, run.train.batch_size)
        worst = max(ours - theirs for ours, theirs in losses.values())
        if variant == "claim" and not self.passes(worst):
            shown = "; ".join(
                f"width {g:g}: extracted {a:.4f} vs separate {b:.4f}"
                for g, (a, b) in losses.items()
            )
            raise Inconclusive(
                f"worst excess {worst:.4f} > {TOLERANCE:g} nats/byte after {run.train.steps} "
                f"steps ({shown})",
                worst,
            )
        return worst
