"""formerlab vs Hugging Face GPT-2 of the exact same size, measured side by side in one process.

    python benchmarks/hf_gpt2_speed.py                      # gpt-small-cpu, 2 threads, 1 round
    python benchmarks/hf_gpt2_speed.py --rounds 3           # alternate the order, median per figure
    python benchmarks/hf_gpt2_speed.py --rounds 2 --compile # formerlab generates with compile=True

Prints one JSON object ``{"formerlab": {...}, "hf_gpt2": {...}, "ratio": {...}}``. Both models are
timed by the same code (:func:`formerlab.bench.speed.run_protocol`): training and forward on a
16 × 256 batch, greedy generation of 128 tokens from a 32-token prompt. The reference is
``transformers.GPT2LMHeadModel`` built from a ``GPT2Config`` mirroring the formerlab config (random
weights, no dropout, exact GELU, tied embeddings, SDPA attention); it generates through its own
``generate(do_sample=False, max_new_tokens=N, min_new_tokens=N, use_cache=True)`` and runs its
training/forward passes with ``use_cache=False`` (its fastest setting for full sequences). ``ratio``
is formerlab / GPT-2 for each tokens-per-second figure (> 1: formerlab is faster). ``peak_rss_mb``
is the process's peak so far, so the model measured second also carries the first one's memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

import torch

from formerlab.bench.speed import SpeedProtocol, run_protocol, speed_benchmark
from formerlab.errors import ConfigError, FormerlabError
from formerlab.models import ModelConfig, preset_dict

SPEEDS = ("train_tokens_per_s", "fwd_tokens_per_s", "gen_tokens_per_s")

#: what a formerlab config must be for GPT2LMHeadModel to be the same architecture
_GPT2_SHAPE = {
    "kind": ("decoder_lm",),
    "attention.kind": ("softmax",),
    "norm.kind": ("layernorm",),
    "norm_placement": ("pre",),
    "ffn.kind": ("mlp",),
    "ffn.activation": ("gelu",),
    "position.kind": ("learned",),
    "linear.kind": ("dense",),
    "tie_embeddings": (True,),
}


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_gpt2_shape(cfg: ModelConfig) -> None:
    """ConfigError naming the first field that GPT-2 cannot mirror."""
    flat = _flat(cfg.to_dict())
    for field, allowed in _GPT2_SHAPE.items():
        if flat.get(field) not in allowed:
            raise ConfigError(
                f"model.{field}: invalid value {flat.get(field)!r} for a GPT-2 reference; "
                f"allowed: {', '.join(repr(a) for a in allowed)}"
            )
    if flat.get("attention.num_kv_heads") not in (None, cfg.num_heads):
        raise ConfigError(
            f"model.attention.num_kv_heads: invalid value {flat['attention.num_kv_heads']!r} for a "
            f"GPT-2 reference; allowed: null or {cfg.num_heads}"
        )


def build_gpt2(cfg: ModelConfig, seed: int) -> torch.nn.Module:
    """``GPT2LMHeadModel`` with random weights and the same sizes as the formerlab ``cfg``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_embd=cfg.dim,
        n_layer=cfg.depth,
        n_head=cfg.num_heads,
        n_inner=round(cfg.ffn.mult * cfg.dim),
        n_positions=cfg.max_seq_len,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(gpt2_cfg)


def hf_benchmark(cfg: ModelConfig, proto: SpeedProtocol) -> dict[str, Any]:
    """The speed protocol on the GPT-2 mirror of ``cfg``."""
    import transformers

    model = build_gpt2(cfg, proto.seed)

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return model(ids, use_cache=False).logits

    def generate(prompt: torch.Tensor) -> torch.Tensor:
        return model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=proto.new_tokens,
            min_new_tokens=proto.new_tokens,
            use_cache=True,
        )

    figures = run_protocol(model, forward, generate, cfg.vocab_size, proto)
    attn = model.config._attn_implementation
    return {**figures, "transformers": transformers.__version__, "attn_implementation": attn}


def _median_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The last round's figures with each speed replaced by its median over rounds."""
    merged = dict(rounds[-1])
    for key in SPEEDS:
        merged[key] = statistics.median(r[key] for r in rounds)
    merged["rounds"] = len(rounds)
    return merged


def compare(preset: str = "gpt-small-cpu", rounds: int = 1, **protocol: Any) -> dict[str, Any]:
    """Both benchmarks, alternating which goes first each round; everything validated up front."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds: invalid value {rounds!r}; allowed: an int >= 1")
    proto = SpeedProtocol.from_dict(protocol, "bench")
    cfg = ModelConfig.from_dict(preset_dict(preset, "preset"), "model")
    check_gpt2_shape(cfg)
    proto.check_fits(cfg.max_seq_len)
    runs: dict[str, list[dict[str, Any]]] = {"formerlab": [], "hf_gpt2": []}
    measure = {
        "formerlab": lambda: speed_benchmark(preset, **protocol),
        "hf_gpt2": lambda: {**hf_benchmark(cfg, proto), "preset": preset},
    }
    for i in range(rounds):
        order = ("formerlab", "hf_gpt2") if i % 2 == 0 else ("hf_gpt2", "formerlab")
        for name in order:
            runs[name].append(measure[name]())
    result = {name: _median_rounds(r) for name, r in runs.items()}
    ratio = {k: result["formerlab"][k] / result["hf_gpt2"][k] for k in SPEEDS}
    return {**result, "ratio": ratio}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt-small-cpu", help="a GPT-2-shaped formerlab preset")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (median)")
    for field, default in SpeedProtocol().to_dict().items():
        flag = "--" + field.replace("_", "-")
        if isinstance(default, bool):  # e.g. --compile: formerlab generates with compile=True
            parser.add_argument(flag, action="store_true", default=default, dest=field)
        else:
            parser.add_argument(flag, type=type(default), default=default, dest=field)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        result = compare(args.pop("preset"), args.pop("rounds"), **args)
    except FormerlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
