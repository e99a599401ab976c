"""Named model configs (timm-style): ``build_model("gpt-small-cpu")`` or ``model: gpt-small-cpu``."""

from __future__ import annotations

import copy
from typing import Any

from ..errors import ConfigError

_GPT_SMALL_CPU: dict[str, Any] = {
    "kind": "decoder_lm",
    "vocab_size": 256,
    "dim": 256,
    "depth": 4,
    "num_heads": 4,
    "max_seq_len": 256,
    "attention": {"kind": "softmax", "dropout": 0.0},
    "norm": {"kind": "layernorm"},
    "norm_placement": "pre",
    "ffn": {"kind": "mlp", "mult": 4.0, "activation": "gelu"},
    "position": {"kind": "learned"},
    "tie_embeddings": True,
    "dropout": 0.0,
}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt-small-cpu": (
        "byte-level GPT-2-style LM sized for a laptop CPU (3.2M params)",
        _GPT_SMALL_CPU,
    ),
    "gpt-tiny": (
        "2-layer, 64-wide decoder for tests and smoke runs",
        {**_GPT_SMALL_CPU, "dim": 64, "depth": 2, "num_heads": 2, "max_seq_len": 128},
    ),
    "llama-small-cpu": (
        "LLaMA-style decoder: RMSNorm, SwiGLU-free SiLU MLP, RoPE, grouped-query attention",
        {
            **_GPT_SMALL_CPU,
            "attention": {"kind": "softmax", "num_kv_heads": 2, "bias": False},
            "norm": {"kind": "rmsnorm"},
            "ffn": {"kind": "mlp", "mult": 4.0, "activation": "silu", "bias": False},
            "position": {"kind": "rope"},
            "tie_embeddings": False,
        },
    ),
    "bert-small-cpu": (
        "bidirectional encoder with a 2-class [CLS] classifier head",
        {
            **_GPT_SMALL_CPU,
            "kind": "encoder",
            "head": {"kind": "classifier", "num_classes": 2, "pooling": "cls"},
        },
    ),
    "t5-small-cpu": (
        "encoder-decoder (2+2 layers) with shared embeddings",
        {**_GPT_SMALL_CPU, "kind": "encoder_decoder", "depth": 2, "decoder_depth": 2},
    ),
}


def preset_dict(name: str, path: str = "model") -> dict[str, Any]:
    """The plain config dict of a preset (a fresh copy)."""
    if name not in PRESETS:
        raise ConfigError(f"{path}: unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name][1])


def list_presets() -> list[tuple[str, str]]:
    return [(name, desc) for name, (desc, _) in sorted(PRESETS.items())]
