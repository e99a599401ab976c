"""pair_classifier: the two-tower encoder (shared weights, [u, v, u*v, u-v]), shapes, masks, errors."""

from __future__ import annotations

import pytest
import torch

import formerlab as fl
from formerlab.errors import ConfigError, InputError
from formerlab.models.heads import PairClassifierHead

VOCAB, DIM = 29, 16


def pair_model(pooling: str = "mean", **head: object) -> torch.nn.Module:
    cfg = {
        "kind": "encoder",
        "vocab_size": VOCAB,
        "dim": DIM,
        "depth": 2,
        "num_heads": 2,
        "max_seq_len": 24,
        "head": {"kind": "pair_classifier", "pooling": pooling, "num_classes": 3, **head},
    }
    torch.manual_seed(0)
    return fl.build_model(cfg).double().eval()


def fc1_inputs(model: torch.nn.Module, *args: torch.Tensor, **kwargs) -> torch.Tensor:
    """The (B, 4D) features the head's MLP sees on this forward."""
    seen = []
    hook = model.head.fc1.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        model(*args, **kwargs)
    hook.remove()
    return seen[0]


def pairs(batch: int = 3, length: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, 2, length), generator=g)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pair_output_equals_two_separately_encoded_towers(pooling: str) -> None:
    model, ids = pair_model(pooling), pairs()
    with torch.no_grad():
        out = model(ids)
        u = model.head.pool(model.encode(ids[:, 0]))  # each tower on its own
        v = model.head.pool(model.encode(ids[:, 1]))
        h = torch.relu(model.head.fc1(torch.cat([u, v, u * v, u - v], dim=-1)))
        expected = model.head.out(torch.relu(model.head.fc2(h)))
    assert out.shape == (3, 3) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_identical_documents_give_identical_vectors() -> None:
    model = pair_model()
    ids = pairs()
    ids[:, 1] = ids[:, 0]
    x = fc1_inputs(model, ids)
    u, v, uv, diff = x.split(DIM, dim=-1)
    torch.testing.assert_close(u, v, rtol=0, atol=0)
    assert diff.abs().max() == 0 and torch.equal(uv, u * v)
    # a document's vector does not depend on its partner or on the other pairs of the batch
    other = pairs(seed=1)
    other[:, 0] = ids[:, 0]
    torch.testing.assert_close(fc1_inputs(model, other)[:, :DIM], u, rtol=1e-12, atol=1e-12)


def test_swapping_documents_acts_only_through_u_minus_v() -> None:
    model, ids = pair_model(), pairs()
    x, x_swapped = fc1_inputs(model, ids), fc1_inputs(model, ids.flip(1))
    u, v, uv, diff = x.split(DIM, dim=-1)
    torch.testing.assert_close(x_swapped, torch.cat([v, u, uv, -diff], -1), rtol=0, atol=1e-14)
    with torch.no_grad():
        w = model.head.fc1.weight  # (hidden, 4D): blocks for u, v, u*v, u-v
        w[:, DIM : 2 * DIM] = w[:, :DIM]  # the same weights for u and for v
        assert (model(ids) - model(ids.flip(1))).abs().max() > 1e-6  # u-v still tells order
        w[:, 3 * DIM :] = 0.0  # and no u-v term: the order cannot matter any more
        torch.testing.assert_close(model(ids), model(ids.flip(1)), rtol=1e-12, atol=1e-12)


def test_padding_of_one_document_changes_nothing_with_mean_pooling() -> None:
    model, ids = pair_model("mean"), pairs(batch=2, length=12)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, 1, 7:] = False  # pair 0: the second document has 7 real tokens
    padded = ids.clone()
    padded[0, 1, 7:] = 0
    with torch.no_grad():
        out = model(padded, attention_mask=mask)
        v = model.head.pool(model.encode(ids[:1, 1, :7]))  # that document alone, unpadded
    torch.testing.assert_close(
        fc1_inputs(model, padded, attention_mask=mask)[0, DIM : 2 * DIM], v[0]
    )
    torch.testing.assert_close(out[1], model(ids[1:])[0].detach(), rtol=1e-12, atol=1e-12)


def test_pair_model_trains() -> None:
    model = pair_model().float().train()
    model(pairs()).square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.transformer.embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("shape", "mask_shape", "match"),
    [
        ((3, 10), None, r"input_ids: shape \(3, 10\); a pair head needs \(batch, 2, seq\)"),
        ((3, 3, 10), None, r"input_ids: shape \(3, 3, 10\)"),
        ((3, 2, 10), (3, 20), r"attention_mask: shape \(3, 20\); expected the shape"),
    ],
)
def test_bad_input_shapes_fail_before_compute(shape, mask_shape, match) -> None:
    model = pair_model()
    mask = None if mask_shape is None else torch.ones(mask_shape, dtype=torch.bool)
    with pytest.raises(InputError, match=match):
        model(torch.zeros(shape, dtype=torch.long), attention_mask=mask)


def test_head_rejects_an_odd_number_of_documents() -> None:
    head = pair_model().head
    with pytest.raises(InputError, match=r"expected \(2B, T, D\)"):
        head(torch.zeros(3, 5, DIM, dtype=torch.float64))


def test_head_sizes_and_config_errors() -> None:
    head = pair_model(hidden=10).head
    assert isinstance(head, PairClassifierHead)
    assert (head.fc1.in_features, head.fc1.out_features, head.fc2.out_features) == (4 * DIM, 10, 5)
    assert pair_model().head.fc1.out_features == DIM  # null hidden: the model width
    with pytest.raises(ConfigError, match=r"model\.head\.hidden: invalid value 1; allowed: null"):
        pair_model(hidden=1)
    with pytest.raises(ConfigError, match=r"model\.head\.num_classes"):
        pair_model(num_classes=0)
    with pytest.raises(ConfigError, match=r"model\.head\.pooling"):
        pair_model(pooling="max")
    assert "2011.04006" in fl.describe("head", "pair_classifier")["paper"]


def test_single_sequence_heads_keep_the_normal_path() -> None:
    model = fl.build_model({"kind": "encoder", "vocab_size": VOCAB, "dim": DIM, "num_heads": 2})
    assert not model.pair_input
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 2)


RUN = {"train": {"steps": 1}}
PAIR_HEAD = {"kind": "pair_classifier", "num_classes": 2}
MODEL = {"kind": "encoder", "vocab_size": 258, "dim": 16, "num_heads": 2, "max_seq_len": 257}


@pytest.mark.parametrize(
    ("head", "task", "match"),
    [
        (PAIR_HEAD, {"kind": "listops"}, r"model\.head\.kind: 'pair_classifier' cannot train "),
        ({"kind": "classifier"}, {"kind": "retrieval"}, r"model\.head\.kind: 'classifier' cannot"),
        ({"kind": "none"}, {"kind": "retrieval"}, r"allowed: a pair head \(pair_classifier\)"),
    ],
)
def test_pair_heads_go_with_pair_tasks_only(head, task, match) -> None:
    with pytest.raises(ConfigError, match=match):
        fl.load_config({"model": {**MODEL, "head": head}, "task": task, **RUN})
    fl.load_config({"model": {**MODEL, "head": PAIR_HEAD}, "task": {"kind": "retrieval"}, **RUN})
