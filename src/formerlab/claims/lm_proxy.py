"""The small byte-level code LM that several claim checks train (``primer``, ``quantizable``).

One decoder (4 blocks of width 128, 4 heads, context 128, pre-LayerNorm, learned positions, ReLU MLP
of width 512, softmax attention) on ``code_lm`` (the Python standard library, bytes, split by file),
trained with AdamW (lr 2e-3, weight decay 0.1, cosine schedule with 30 warm-up steps, clipping at 1)
on batches of 16 windows. A check swaps the attention or the FFN activation and sets the steps and
the seed; everything else is shared, so arms differ only in what the check names.

The training loop is :func:`formerlab.claims.lra.train_model`; data order depends only on the task
seed, so every arm of a seed sees the same batches. Validation loss is the mean next-byte
cross-entropy in nats per byte (the byte tokenizer makes a token one byte) over ``eval_batches``
fixed validation batches, the same batches for every arm.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..run_config import RunConfig, load_config
from .lra import load_task as load_task  # re-exported: the checks of this proxy use it
from .lra import train_new_model

#: the shared set-up; ``proxy_run`` replaces the attention, the activation, the steps and the seed
CODE_LM_PROXY: dict[str, Any] = {
    "model": {
        "kind": "decoder_lm",
        "vocab_size": 256,
        "dim": 128,
        "depth": 4,
        "num_heads": 4,
        "max_seq_len": 128,
        "attention": {"kind": "softmax"},
        "norm": {"kind": "layernorm"},
        "norm_placement": "pre",
        "ffn": {"kind": "mlp", "mult": 4, "activation": "relu"},
        "position": {"kind": "learned"},
        "tie_embeddings": True,
    },
    "task": {"kind": "code_lm", "seq_len": 128, "eval_batches": 16},
    "train": {
        "batch_size": 16,
        "grad_clip": 1.0,
        "optimizer": {"kind": "adamw", "lr": 2.0e-3, "weight_decay": 0.1},
        "schedule": {"kind": "cosine", "warmup_steps": 30},
    },
}


def proxy_run(
    *,
    steps: int,
    seed: int,
    attention: dict[str, Any] | None = None,
    activation: str | None = None,
) -> RunConfig:
    """The proxy with ``steps`` steps, init seed ``seed``, and optionally another attention config
    or FFN activation (validated like any run file)."""
    data = copy.deepcopy(CODE_LM_PROXY)
    if attention is not None:
        data["model"]["attention"] = dict(attention)
    if activation is not None:
        data["model"]["ffn"]["activation"] = activation
    data["train"].update(steps=steps, seed=seed)
    return load_config(data)


def train_lm(run: RunConfig, task: Any) -> torch.nn.Module:
    """Build the model with ``torch.manual_seed(run.train.seed)`` and train it for the run's steps
    (returned in eval mode)."""
    return train_new_model(run, task).eval()


def val_batches(task: Any, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The task's ``eval_batches`` fixed validation batches."""
    return [task.batch("val", i, batch_size) for i in range(task.config.eval_batches)]


def calibration_batches(task: Any, batch_size: int, count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` training batches that no training run of the proxy uses (indices from 10**6)."""
    return [task.batch("train", 10**6 + i, batch_size) for i in range(count)]


@torch.no_grad()
def mean_loss(task: Any, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean next-token loss of ``model`` over ``batches`` (nats per byte with the byte tokenizer)."""
    was_training = model.training
    model.eval()
    try:
        return sum(float(task.loss(model, b)[0]) for b in batches) / len(batches)
    finally:
        model.train(was_training)
