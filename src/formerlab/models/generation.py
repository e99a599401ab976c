"""Autoregressive decoding: greedy, temperature, top-k, top-p, EOS stop, batched prompts of different
lengths (left-padded), seeded sampling, with a KV cache when every attention layer supports one."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InputError
from ..layers.attention.cache import DecodeCache, StaticDecode, StaticKVCache
from ..ops.sampling import sample_next

Step = Callable[[torch.Tensor, torch.Tensor | None, Any], torch.Tensor]
_warned: set[str] = set()


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids of different lengths -> (B, T) ids and (B, T) bool mask, padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("prompt_ids: every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = True
    return ids, mask


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None):
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens: {max_new_tokens}; allowed: >= 0")
    if temperature < 0:
        raise InputError(f"temperature: {temperature}; allowed: >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k: {top_k}; allowed: >= 1 or None")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p: {top_p}; allowed: 0 < p <= 1 or None")


def decode_loop(
    step: Step,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    cache: Any,
    max_new_tokens: int,
    *,
    eos_token_id: int | None = None,
    **sampling: Any,
) -> torch.Tensor:
    """Append ``max_new_tokens`` tokens to ``ids`` (B, T); finished rows are filled with EOS."""
    finished = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    step_input = ids
    for _ in range(max_new_tokens):
        logits = step(step_input, mask, cache)  # (B, V)
        nxt = sample_next(logits, **sampling)
        if eos_token_id is not None:
            nxt = nxt.masked_fill(finished, eos_token_id)
            finished |= nxt == eos_token_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
        step_input = nxt[:, None] if cache is not None else ids
        if eos_token_id is not None and bool(finished.all()):
            break
    return ids


def _trim(row: list[int], width: int, prompt_len: int, eos: int | None) -> list[int]:
    out = row[width - prompt_len :]
    if eos is not None and eos in out[prompt_len:]:
        out = out[: out.index(eos, prompt_len) + 1]
    return out


@torch.inference_mode()
def generate(
    model: Any,
    prompt_ids: torch.Tensor | Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    compile: bool = False,
) -> torch.Tensor | list[list[int]]:
    """Decode from a decoder LM.

    ``prompt_ids`` is a (B, T) tensor (with an optional (B, T) bool ``attention_mask`` marking left
    padding) -> a (B, T + max_new_tokens) tensor; or a list of id lists of any lengths -> a list of
    id lists (prompt + new tokens, up to and including EOS). ``temperature=0`` is greedy; ``seed``
    makes sampling reproducible.

    ``compile=True`` decodes on fixed key/value buffers (``max_seq_len`` long) with one
    ``torch.compile``d step (C++ wrapper), built on the first call for each batch size and kept
    with the model: faster once compiled (the first call compiles, ~20 s on 2 cores); the tokens
    match the eager decode in tests, though compiled kernels may round differently. It needs a C++
    compiler; if compiling fails it warns once and runs the same step eagerly.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    as_list = not isinstance(prompt_ids, torch.Tensor)
    if as_list:
        lengths = [len(p) for p in prompt_ids]
        ids, attention_mask = left_pad(prompt_ids)
    else:
        ids = prompt_ids
    total = ids.size(1) + max_new_tokens
    if total > model.config.max_seq_len:
        raise InputError(
            f"max_new_tokens: prompt ({ids.size(1)}) + {max_new_tokens} new tokens = {total} "
            f"exceeds max_seq_len={model.config.max_seq_len}"
        )
    model.transformer.check_input(ids)
    cache = None
    if use_cache and model.supports_kv_cache:
        cache = model.new_cache()
    elif use_cache and type(model.config.attention).__name__ not in _warned:
        _warned.add(type(model.config.attention).__name__)
        warnings.warn(
            f"attention {model.config.attention.kind!r} has no KV cache: generate recomputes the "
            "prefix every step (same tokens, slower)",
            stacklevel=2,
        )
    generator = torch.Generator(device=ids.device).manual_seed(seed) if seed is not None else None

    def step(x: torch.Tensor, mask: torch.Tensor | None, c: Any) -> torch.Tensor:
        return model(x, mask, cache=c, last_only=True)[:, -1]

    if compile:
        if cache is None or not getattr(model, "supports_static_cache", False):
            raise InputError(
                f"compile: needs the KV cache and an attention kind with static decode buffers "
                f"(softmax and its variants); got use_cache={use_cache}, attention "
                f"{model.config.attention.kind!r}"
            )
        step = StaticSteps(model, ids.size(0), step)

    out = decode_loop(
        step,
        ids,
        attention_mask,
        cache,
        max_new_tokens,
        eos_token_id=eos_token_id,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
    )
    if not as_list:
        return out
    width = ids.size(1)
    return [
        _trim(row, width, n, eos_token_id) for row, n in zip(out.tolist(), lengths, strict=True)
    ]


class StaticSteps:
    """The decode step on fixed buffers: the prompt runs through the ordinary cached forward, its
    keys and values are copied into the model's static cache, and every later step (one token per
    row, written at the same slot for all rows) runs the compiled forward."""

    def __init__(self, model: Any, batch: int, prefill: Step) -> None:
        self.model, self.prefill = model, prefill
        self.cache, self.compiled = static_decoder(model, batch)
        self.positions: torch.Tensor | None = None  # (B, 1) position id of each row's next token
        self.slot = 0

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None, cache: Any) -> torch.Tensor:
        if self.positions is None:
            logits = self.prefill(x, mask, cache)
            self._load(cache, mask, x.size(1))
            return logits
        state = self.cache.static
        state.slot.fill_(self.slot)
        state.valid[:, self.slot] = True
        logits = self.compiled(x, self.positions)
        self.slot += 1
        self.positions = self.positions + 1
        return logits

    def _load(self, cache: Any, mask: torch.Tensor | None, length: int) -> None:
        """The prompt's keys/values into the fixed buffers; which slots are real; next positions."""
        state = self.cache.static
        for layer, source in zip(self.cache.layers, cache.layers, strict=True):
            kv = source["kv"]
            k, v = kv.k[:, :, :length], kv.v[:, :, :length]
            if "kv" in layer:
                layer["kv"].load(k, v)
            else:
                layer["kv"] = StaticKVCache(k, v, state.valid.size(1))
                layer["static"] = state
        state.valid.zero_()
        state.valid[:, :length] = True if mask is None else mask
        real = torch.full((state.valid.size(0), 1), length) if mask is None else mask.sum(-1, True)
        self.positions, self.slot = real.to(torch.long), length


def static_decoder(model: Any, batch: int) -> tuple[DecodeCache, Callable[..., torch.Tensor]]:
    """The model's static decode cache for ``batch`` rows and its compiled step, built once and
    kept with the model (the same objects every call, so the compiled graph is reused)."""
    store = model.__dict__.setdefault("_static_decode", {})
    first = next(model.parameters())
    key = batch, first.dtype, first.device  # a model moved or cast gets new buffers and graph
    if key not in store:
        cache = model.new_cache()
        cache.static = StaticDecode(batch, model.config.max_seq_len, first.device)

        def forward(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            return model(ids, position_ids=positions, cache=cache, last_only=True)[:, -1]

        store[key] = cache, _compiled_or_eager(forward)
    return store[key]


def _compiled_or_eager(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``torch.compile(forward)`` (whole graph, static shapes, C++ wrapper); if compiling fails,
    one warning and ``forward`` itself from then on."""
    compiled = torch.compile(forward, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
    chosen: list[Callable[..., torch.Tensor]] = []

    def run(*args: torch.Tensor) -> torch.Tensor:
        if chosen:
            return chosen[0](*args)
        try:
            out = compiled(*args)
            chosen.append(compiled)
        except Exception as err:  # no C++ compiler, or an op inductor cannot lower
            warnings.warn(
                f"generate(compile=True): compiling failed ({err!r:.200}); decoding eagerly",
                stacklevel=3,
            )
            chosen.append(forward)
            out = forward(*args)
        return out

    return run
