"""``looped`` / ``looped_lm`` (AlgoFormer depth scheme): weight sharing, the unrolled-stack identity,
input injection, train/eval iteration counts, causality, cached decoding and config errors."""

from __future__ import annotations

import copy

import pytest
import torch

import formerlab as fl
from formerlab.errors import ConfigError, InputError
from formerlab.registry import TASK
from formerlab.train import trainer as tr

BASE = dict(vocab_size=23, dim=16, num_heads=2, max_seq_len=20)
LOOP = ("pre_depth", "post_depth", "loops", "eval_loops", "input_injection")


def looped(kind: str = "looped", **fields) -> torch.nn.Module:
    cfg = {"kind": kind, **BASE, "depth": 3, "pre_depth": 1, "post_depth": 1, "loops": 3, **fields}
    if kind == "looped":
        cfg.setdefault("head", {"kind": "none"})
    return fl.build_model(cfg).double()


def plain_twin(model: torch.nn.Module, calls: list[int]) -> torch.nn.Module:
    """The plain encoder / decoder_lm whose block j is a copy of the looped block ``calls[j]``."""
    cfg = {k: v for k, v in model.config.to_dict().items() if k not in LOOP}
    cfg["kind"] = "encoder" if cfg["kind"] == "looped" else "decoder_lm"
    plain = fl.build_model({**cfg, "depth": len(calls)}).double()
    state = {k: v for k, v in model.state_dict().items() if ".blocks." not in k}
    for j, i in enumerate(calls):
        for name, value in model.transformer.blocks[i].state_dict().items():
            state[f"transformer.blocks.{j}.{name}"] = value
    plain.load_state_dict(state)
    return plain.eval()


def ids(batch: int = 2, length: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, BASE["vocab_size"], (batch, length), generator=g)


def count_calls(model: torch.nn.Module) -> list[int]:
    """A live list of how many times each block ran (forward hooks)."""
    counts = [0] * len(model.transformer.blocks)
    for i, block in enumerate(model.transformer.blocks):
        block.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", ["looped", "looped_lm"])
def test_parameter_count_does_not_depend_on_loops(kind):
    counts = {n_params(looped(kind, loops=k, eval_loops=e)) for k, e in [(1, None), (4, 9), (7, 2)]}
    twin = "encoder" if kind == "looped" else "decoder_lm"
    head = {"head": {"kind": "none"}} if kind == "looped" else {}
    plain = fl.build_model({"kind": twin, **BASE, "depth": 3, **head})
    assert counts == {n_params(plain)}
    assert set(looped(kind).state_dict()) == set(plain.state_dict())


def test_loop_blocks_run_k_times_with_the_same_parameters():
    model = looped(loops=4)
    counts = count_calls(model)
    model(ids())
    assert counts == [1, 4, 1]
    assert len(model.transformer.blocks) == 3
    assert model.transformer.plan(2) == [(0, False), (1, True), (1, True), (2, False)]


def test_shared_gradients_are_the_sum_over_iterations():
    """Autograd through the shared block equals the summed gradients of independent copies."""
    model = looped("looped", loops=3, depth=2, pre_depth=0, post_depth=0, input_injection=True)
    x = ids()
    model(x).pow(2).sum().backward()
    shared = {n: p.grad.clone() for n, p in model.transformer.blocks.named_parameters()}

    stack = model.transformer
    copies = [copy.deepcopy(stack.blocks) for _ in range(3)]  # independent weights per iteration
    with torch.no_grad():
        p = stack.position(stack.embed(x), torch.arange(x.size(1)))
    h = p
    for k, body in enumerate(copies):
        h = h + p if k else h
        for block in body:
            h = block(h)
    stack.final_norm(h).pow(2).sum().backward()
    for name, grad in shared.items():
        total = sum(dict(body.named_parameters())[name].grad for body in copies)
        torch.testing.assert_close(grad, total, rtol=1e-10, atol=1e-12)
    assert all(p.grad is not None for p in stack.blocks.parameters())


@pytest.mark.parametrize("kind", ["looped", "looped_lm"])
def test_one_loop_equals_the_plain_stack(kind):
    model = looped(kind, loops=1).eval()
    plain = plain_twin(model, [0, 1, 2])
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["looped", "looped_lm"])
def test_k_loops_equal_the_unrolled_stack(kind):
    model = looped(kind, loops=3, depth=4, pre_depth=1, post_depth=1).eval()
    plain = plain_twin(model, [0, 1, 2, 1, 2, 1, 2, 3])
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-12, atol=1e-12)


def test_input_injection_adds_the_pre_output_before_later_iterations():
    model = looped(loops=3, input_injection=True).eval()
    stack, x = model.transformer, ids()
    with torch.no_grad():
        h = stack.blocks[0](stack.position(stack.embed(x), torch.arange(x.size(1))))
        p = h
        for k in range(3):
            h = stack.blocks[1](h + p if k else h)
        expected = stack.final_norm(stack.blocks[2](h))
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
        plain = looped(loops=3, input_injection=False)
        plain.load_state_dict(model.state_dict())
        assert (plain.eval()(x) - expected).abs().max() > 1e-6  # injection changes the result
        torch.testing.assert_close(model(x, loops=1), plain(x, loops=1), rtol=0, atol=0)


def test_eval_loops_in_eval_mode_and_runtime_override():
    model = looped(loops=2, eval_loops=5)
    counts = count_calls(model)
    x = ids()
    assert model.loops == 2
    model.train()(x)
    assert counts[1] == 2
    model.eval()
    assert model.loops == 5
    with torch.no_grad():
        out = model(x)
    assert counts[1] == 7
    torch.testing.assert_close(out, model.train()(x, loops=5).detach(), rtol=0, atol=0)
    model.loops = 9
    model(x)
    assert counts[1] == 7 + 9 + 5 and model.loops == 9
    model.loops = None
    assert model.loops == 2 and model.eval().loops == 5
    with pytest.raises(InputError, match="loops"):
        model.loops = 0
    with pytest.raises(InputError, match="loops"):
        model(x, loops=True)


def test_causal_variant_never_sees_the_future():
    model = looped("looped_lm", loops=3, input_injection=True).eval()
    x = ids(length=12)
    changed = x.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % BASE["vocab_size"]
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-12)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-6


def test_cached_decode_equals_full_forward_and_uncached_generate():
    model = looped("looped_lm", loops=2, eval_loops=3, input_injection=True).eval()
    x = ids(length=13)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        assert len(cache.layers) == 1 + 3 + 1
        steps = [model(x[:, :5], cache=cache)]
        steps += [model(x[:, t : t + 1], cache=cache) for t in range(5, 13)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-10, atol=1e-10)
    prompt = x[:, :4]
    cached = model.generate(prompt, max_new_tokens=8)
    uncached = model.generate(prompt, max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached) and cached.shape == (2, 12)
    with pytest.raises(InputError, match="cache"):
        model(x[:, :3], cache=model.new_cache(loops=1))


def test_save_and_load_round_trip(tmp_path):
    model = looped(loops=2, eval_loops=4, input_injection=True).eval()
    loaded = fl.from_pretrained(fl.save_pretrained(model, tmp_path / "m")).double()
    assert loaded.config.to_dict() == model.config.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids()), model(ids()), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"loops": 0}, r"model\.loops: 0"),
        ({"eval_loops": 0}, r"model\.eval_loops: 0"),
        ({"pre_depth": -1}, r"model\.pre_depth: -1"),
        ({"post_depth": -2}, r"model\.post_depth: -2"),
        ({"depth": 2, "pre_depth": 1, "post_depth": 1}, r"model\.depth: 2 leaves no block"),
        ({"dim": 15}, r"model\.dim: 15"),
    ],
)
@pytest.mark.parametrize("kind", ["looped", "looped_lm"])
def test_config_errors_name_the_field(kind, fields, match):
    cfg = {"kind": kind, **BASE, "depth": 3, **fields}
    with pytest.raises(ConfigError, match=match):
        fl.models.ModelConfig.from_dict(cfg, "model")


def test_lm_variant_needs_causal_attention():
    from formerlab.layers.attention.base import capability
    from formerlab.registry import get_registry

    names = [
        n
        for n in fl.list_registered("attention")
        if not capability(get_registry("attention").config_class(n)(), "supports_causal")
    ]
    if not names:
        pytest.skip("every attention kind supports causal masking")
    cfg = {"kind": "looped_lm", **BASE, "depth": 2, "attention": {"kind": names[0]}}
    with pytest.raises(ConfigError, match="supports_causal"):
        fl.models.ModelConfig.from_dict(cfg, "model")


def test_tasks_accept_the_kind_with_their_interface():
    listops = {"kind": "listops", "seq_len": 20, "min_length": 5, "max_length": 20}
    listops.update(train_size=8, val_size=4, test_size=4, max_depth=2)
    task = TASK.entry("listops").impl(TASK.config_class("listops").from_dict(listops), seed=0)
    head = {"kind": "classifier", "num_classes": 10}
    enc = fl.models.ModelConfig.from_dict(
        {"kind": "looped", **BASE, "vocab_size": 17, "head": head}
    )
    task.check_model(enc)
    lm = fl.models.ModelConfig.from_dict({"kind": "looped_lm", **BASE, "vocab_size": 17})
    with pytest.raises(ConfigError, match="cannot train task 'listops'"):
        task.check_model(lm)


def test_trains_through_the_trainer(tmp_path):
    run = fl.load_config(
        {
            "model": {"kind": "looped_lm", **BASE, "depth": 2, "pre_depth": 1, "loops": 2},
            "task": {"kind": "copy", "seq_len": 12, "num_symbols": 8, "eval_batches": 1},
            "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2},
        }
    )
    result = tr.train(run, tmp_path / "run", progress=False)
    assert result is not None and (tmp_path / "run" / "metrics.jsonl").is_file()


def test_initialisation_is_the_plain_stack_s_whatever_the_loops():
    def init(kind: str, **fields) -> dict[str, torch.Tensor]:
        torch.manual_seed(5)
        return fl.build_model({"kind": kind, **BASE, "depth": 3, **fields}).state_dict()

    plain = init("decoder_lm")
    for loops in (1, 6):
        state = init("looped_lm", pre_depth=1, loops=loops)
        assert all(torch.equal(state[k], plain[k]) for k in plain)
