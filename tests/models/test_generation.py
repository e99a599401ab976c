"""Generation: cached == uncached, batched prompts of different lengths, sampling controls, EOS."""

from __future__ import annotations

import pytest
import torch

import formerlab as fl

PRESET_PARTS = {
    "gpt": {},
    "llama": {
        "attention": {"kind": "softmax", "num_kv_heads": 1},
        "norm": "rmsnorm",
        "position": "rope",
        "tie_embeddings": False,
    },
}


def model(dtype=torch.float64, **parts):
    cfg = dict(kind="decoder_lm", vocab_size=50, dim=32, depth=2, num_heads=4, max_seq_len=64)
    return fl.build_model({**cfg, **parts}).to(dtype).eval()


@pytest.mark.parametrize("arch", PRESET_PARTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cached_greedy_equals_uncached(arch: str, dtype: torch.dtype) -> None:
    m = model(dtype, **PRESET_PARTS[arch])
    prompt = torch.randint(0, 50, (3, 7))
    cached = m.generate(prompt, max_new_tokens=20)
    uncached = m.generate(prompt, max_new_tokens=20, use_cache=False)
    assert cached.shape == (3, 27)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :7], prompt)


@pytest.mark.parametrize("arch", PRESET_PARTS)
def test_batched_prompts_of_different_lengths_match_one_by_one(arch: str) -> None:
    m = model(**PRESET_PARTS[arch])
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]
    batched = m.generate(prompts, max_new_tokens=10)
    alone = [m.generate([p], max_new_tokens=10)[0] for p in prompts]
    assert batched == alone
    assert [len(s) for s in batched] == [16, 12, 14]


def test_uncached_batched_prompts_match_too() -> None:
    m = model()
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    assert m.generate(prompts, 6, use_cache=False) == m.generate(prompts, 6)


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    m = model()
    prompt = torch.randint(0, 50, (2, 5))
    greedy = m.generate(prompt, 8)
    assert torch.equal(m.generate(prompt, 8, temperature=1.0, top_k=1, seed=3), greedy)
    assert torch.equal(m.generate(prompt, 8, temperature=1.0, top_p=1e-9, seed=3), greedy)


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    m = model()
    prompt = torch.randint(0, 50, (4, 3))
    a = m.generate(prompt, 30, temperature=1.5, seed=1)
    b = m.generate(prompt, 30, temperature=1.5, seed=1)
    c = m.generate(prompt, 30, temperature=1.5, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_top_k_restricts_to_the_k_best_tokens() -> None:
    m = model()
    prompt = torch.randint(0, 50, (1, 4))
    with torch.no_grad():
        best = set(m(prompt)[0, -1].topk(3).indices.tolist())
    for seed in range(20):
        token = int(m.generate(prompt, 1, temperature=5.0, top_k=3, seed=seed)[0, -1])
        assert token in best


def test_eos_stops_each_row_and_fills_with_eos() -> None:
    m = model()
    prompt = torch.randint(0, 50, (2, 4))
    free = m.generate(prompt, 12)
    eos = int(free[0, 6])  # the token row 0 produces at its third step
    out = m.generate(prompt, 12, eos_token_id=eos)
    first = (out[0, 4:] == eos).nonzero()[0].item()
    assert (out[0, 4 + first :] == eos).all()
    as_list = m.generate([prompt[0].tolist()], 12, eos_token_id=eos)[0]
    assert as_list[-1] == eos and len(as_list) == 4 + first + 1


def test_generation_rejects_bad_arguments_before_compute() -> None:
    m = model()
    with pytest.raises(fl.InputError, match="max_seq_len"):
        m.generate(torch.zeros(1, 60, dtype=torch.long), 10)
    with pytest.raises(fl.InputError, match="top_p"):
        m.generate(torch.zeros(1, 2, dtype=torch.long), 2, temperature=1.0, top_p=1.5)
    with pytest.raises(fl.InputError, match="out of range"):
        m.generate([[1, 99]], 2)


def test_encoder_decoder_cached_generation_equals_uncached() -> None:
    m = (
        fl.build_model(
            dict(
                kind="encoder_decoder", vocab_size=40, dim=32, depth=2, num_heads=2, max_seq_len=32
            )
        )
        .double()
        .eval()
    )
    src = torch.randint(0, 40, (3, 9))
    cached = m.generate(src, 12)
    assert cached.shape == (3, 13)
    assert torch.equal(cached, m.generate(src, 12, use_cache=False))
    # teacher forcing on the generated target gives the same argmax at every step
    with torch.no_grad():
        logits = m(src, cached[:, :-1])
    assert torch.equal(logits.argmax(-1), cached[:, 1:])


@pytest.fixture
def eager_compile(monkeypatch):
    """``torch.compile`` as the identity: the static decode path runs eagerly (fast tests)."""
    from formerlab.models import generation

    monkeypatch.setattr(generation.torch, "compile", lambda fn, **_: fn)


@pytest.mark.parametrize("arch", PRESET_PARTS)
def test_static_decode_equals_the_growing_cache(eager_compile, arch: str) -> None:
    m = model(**PRESET_PARTS[arch])
    prompt = torch.randint(0, 50, (3, 7))
    assert torch.equal(m.generate(prompt, 20, compile=True), m.generate(prompt, 20))
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]  # left padding: per-row positions
    assert m.generate(prompts, 10, compile=True) == m.generate(prompts, 10)
    sampled = dict(temperature=1.0, top_k=20, seed=5)
    assert m.generate(prompts, 10, compile=True, **sampled) == m.generate(prompts, 10, **sampled)
    assert len(m.__dict__["_static_decode"]) == 1  # one static cache per batch size, reused
    m.float()  # cast: new buffers and graph, same tokens
    assert torch.equal(m.generate(prompt, 20, compile=True), m.generate(prompt, 20))
    assert len(m.__dict__["_static_decode"]) == 2


def test_static_decode_falls_back_to_eager_when_compiling_fails(monkeypatch) -> None:
    from formerlab.models import generation

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(generation.torch, "compile", lambda fn, **_: broken)
    m = model()
    prompt = torch.randint(0, 50, (2, 5))
    with pytest.warns(UserWarning, match="compiling failed"):
        out = m.generate(prompt, 8, compile=True)
    assert torch.equal(out, m.generate(prompt, 8))


def test_static_decode_needs_the_cache_and_a_static_attention_kind() -> None:
    with pytest.raises(fl.InputError, match="compile: needs the KV cache"):
        model().generate(torch.ones(1, 3, dtype=torch.long), 4, use_cache=False, compile=True)
    primer = model(attention={"kind": "mdha"})
    assert primer.supports_kv_cache and not primer.supports_static_cache
    with pytest.raises(fl.InputError, match="'mdha'"):
        primer.generate(torch.ones(1, 3, dtype=torch.long), 4, compile=True)


@pytest.mark.slow
def test_compiled_static_decode_gives_the_same_tokens() -> None:
    m = model(torch.float32)
    prompt = torch.randint(0, 50, (1, 9))
    assert torch.equal(m.generate(prompt, 30, compile=True), m.generate(prompt, 30))
