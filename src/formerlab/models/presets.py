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

#: Wide vs deep at a fixed total of 16 heads of width 16 (Brown et al., 2022, "Wide Attention Is The
#: Way Forward For Transformers?", arXiv:2210.00640): a byte-level text classifier (vocab 258 = bytes,
#: PAD, CLS; 8 classes: fortunes languages) of width 64, mean pooling. Deep: 4 layers x 4 heads.
_DEEP_4X4: dict[str, Any] = {
    "kind": "encoder",
    "vocab_size": 258,
    "dim": 64,
    "depth": 4,
    "num_heads": 4,
    "max_seq_len": 128,
    "attention": {"kind": "softmax", "head_dim": 16},
    "ffn": {"kind": "mlp", "mult": 4.0, "activation": "gelu"},
    "position": {"kind": "learned"},
    "head": {"kind": "classifier", "num_classes": 8, "pooling": "mean"},
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
    "deep-4x4": (
        "deep byte classifier: 4 layers x 4 heads of width 16 (16 heads in all), width 64",
        _DEEP_4X4,
    ),
    "wide-1x16": (
        "wide byte classifier: 1 layer x 16 heads of width 16 (attention 256 wide), width 64",
        {**_DEEP_4X4, "depth": 1, "num_heads": 16},
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
