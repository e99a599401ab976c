"""The ``moe`` feed-forward: sparse dispatch = dense reference, gates, capacity, aux losses, config."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.layers.aux import collect_aux, parameter_counts, take_records
from formerlab.layers.ffn.mlp import MLP
from formerlab.layers.ffn.moe import MoE, MoEConfig
from formerlab.layers.linear import DenseConfig

DIM = 8


def make_moe(**fields) -> MoE:
    torch.manual_seed(0)
    cfg = MoEConfig.from_dict({"kind": "moe", "num_experts": 4, **fields})
    return MoE(cfg, dim=DIM, linear=DenseConfig()).double().eval()


def inputs(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def record(moe: MoE) -> tuple[torch.Tensor | None, dict]:
    ((_, loss, metrics),) = take_records(moe)
    return loss, metrics


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("capacity_factor", [None, 1.0, 0.5])
def test_sparse_dispatch_equals_dense_reference(top_k, capacity_factor) -> None:
    moe = make_moe(top_k=top_k, capacity_factor=capacity_factor)
    x = inputs(3, 7)
    out = moe(x)
    _, metrics = record(moe)
    torch.testing.assert_close(out, moe.dense_reference(x), rtol=0, atol=1e-13)
    assert out.shape == x.shape
    if capacity_factor == 0.5:  # the case with drops really drops: at most n * cap kept
        assignments = 21 * top_k
        assert metrics["moe_dropped_frac"] >= 1 - 4 * moe.capacity(21) / assignments - 1e-12 > 0
    if capacity_factor is None:
        assert metrics["moe_dropped_frac"] == 0.0


@pytest.mark.parametrize("top_k", [1, 2])
def test_sparse_gradients_equal_dense_reference_gradients(top_k) -> None:
    moe = make_moe(top_k=top_k, capacity_factor=0.75)
    x = inputs(2, 9).requires_grad_()
    grads = []
    for fn in (moe, moe.dense_reference):
        moe.zero_grad()
        x.grad = None
        fn(x).square().sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in moe.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert moe.router.weight.grad.abs().sum() > 0  # the task loss trains the router


def test_combining_without_gates_breaks_the_identity() -> None:
    moe = make_moe(top_k=2)
    x = inputs(3, 7)
    assert (moe(x) - moe.dense_reference(x, use_gates=False)).abs().max() > 1e-3


def test_gates_top1_raw_probability_top2_renormalised() -> None:
    x = inputs(5).reshape(-1, DIM)
    for k in (1, 2):
        moe = make_moe(top_k=k)
        r = moe.route(x)
        probs = torch.softmax(x @ moe.router.weight.T, dim=-1)
        top, idx = probs.sort(dim=-1, descending=True)
        assert torch.equal(r.experts, idx[:, :k])
        expected = top[:, :1] if k == 1 else top[:, :2] / top[:, :2].sum(-1, keepdim=True)
        torch.testing.assert_close(r.gates, expected, rtol=0, atol=1e-15)
    assert (r.gates.sum(-1) - 1).abs().max() < 1e-15


def test_output_is_gate_weighted_sum_of_chosen_experts() -> None:
    moe = make_moe(top_k=2)
    x = inputs(6).reshape(-1, DIM)
    r = moe.route(x)
    expected = torch.stack(
        [
            sum(r.gates[t, j] * moe.experts[int(r.experts[t, j])](x[t]) for j in range(2))
            for t in range(x.size(0))
        ]
    )
    torch.testing.assert_close(moe(x), expected, rtol=0, atol=1e-13)


def _all_to_expert_zero(moe: MoE) -> None:
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0  # logit of expert 0 is sum(x), of the others 0


def test_capacity_keeps_the_first_tokens_and_drops_the_rest() -> None:
    moe = make_moe(capacity_factor=1.0)
    _all_to_expert_zero(moe)
    x = inputs(10).abs()  # sum(x) > 0: every token's top-1 is expert 0
    out = moe(x)
    _, metrics = record(moe)
    cap = math.ceil(1.0 * 10 * 1 / 4)
    assert moe.capacity(10) == cap == 3
    gate = torch.softmax(x @ moe.router.weight.T, -1)[:, 0:1]
    torch.testing.assert_close(out[:cap], gate[:cap] * moe.experts[0](x[:cap]), rtol=0, atol=1e-14)
    assert torch.equal(out[cap:], torch.zeros_like(out[cap:]))
    assert metrics["moe_dropped_frac"] == pytest.approx((10 - cap) / 10, abs=1e-15)
    assert metrics["moe_load"] == [1.0, 0.0, 0.0, 0.0]  # routed load, before capacity
    assert metrics["moe_load_cv"] == pytest.approx(math.sqrt(4 - 1), abs=1e-12)


def test_no_capacity_drops_nothing() -> None:
    moe = make_moe()
    _all_to_expert_zero(moe)
    x = inputs(10).abs()
    gate = torch.softmax(x @ moe.router.weight.T, -1)[:, 0:1]
    torch.testing.assert_close(moe(x), gate * moe.experts[0](x), rtol=0, atol=1e-14)
    with torch.no_grad():  # idle experts are skipped without autograd: same result
        torch.testing.assert_close(moe(x), gate * moe.experts[0](x), rtol=0, atol=1e-14)


def test_balancing_and_z_loss_match_their_formulas() -> None:
    moe = make_moe(top_k=2, aux_loss_weight=0.3, z_loss_weight=0.07)
    x = inputs(4, 5)
    moe(x)
    loss, metrics = record(moe)
    logits = x.reshape(-1, DIM) @ moe.router.weight.detach().T
    probs = logits.softmax(-1)
    chosen = probs.topk(2, dim=-1).indices
    f = torch.bincount(chosen.flatten(), minlength=4).double() / chosen.numel()
    balance = 4 * (f * probs.mean(0)).sum()
    z = (torch.logsumexp(logits, -1) ** 2).mean()
    torch.testing.assert_close(loss, 0.3 * balance + 0.07 * z, rtol=0, atol=1e-14)
    assert metrics["moe_load"] == pytest.approx(f.tolist(), abs=1e-15)
    assert metrics["moe_balance_loss"] == pytest.approx(float(balance), abs=1e-14)
    assert metrics["moe_z_loss"] == pytest.approx(float(z), abs=1e-14)
    assert metrics["moe_load_cv"] == pytest.approx(float(f.std(unbiased=False) / f.mean()))


def test_uniform_router_gives_balance_loss_one_and_z_loss_log_n_squared() -> None:
    moe = make_moe(top_k=1)
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(inputs(3, 4))
    _, metrics = record(moe)
    assert metrics["moe_balance_loss"] == pytest.approx(1.0, abs=1e-14)
    assert metrics["moe_z_loss"] == pytest.approx(math.log(4) ** 2, abs=1e-14)


def test_balancing_loss_gradient_reaches_the_router_only() -> None:
    moe = make_moe(aux_loss_weight=1.0, z_loss_weight=0.0)
    moe.train()
    moe(inputs(3, 4))
    loss, _ = record(moe)
    loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in moe.experts.parameters())


def test_zero_weights_record_no_loss_but_metrics() -> None:
    moe = make_moe(aux_loss_weight=0.0, z_loss_weight=0.0)
    moe(inputs(2, 3))
    loss, metrics = record(moe)
    assert loss is None and "moe_load_cv" in metrics


def test_router_jitter_only_in_training() -> None:
    moe = make_moe(router_jitter=0.5)
    x = inputs(4, 6)
    a, b = moe(x), moe(x)
    assert torch.equal(a, b)  # eval: no jitter
    moe.train()
    torch.manual_seed(3)
    c = moe(x)
    assert not torch.equal(a, c)
    plain = make_moe().train()
    assert torch.equal(plain(x), a)  # jitter 0: training routes like eval


def test_one_expert_moe_equals_its_mlp() -> None:
    moe = make_moe(num_experts=1)
    x = inputs(3, 5)
    torch.testing.assert_close(moe(x), moe.experts[0](x), rtol=0, atol=0)
    assert isinstance(moe.experts[0], MLP)


def test_capacity_drops_keep_a_decoder_causal() -> None:
    ffn = {"kind": "moe", "num_experts": 4, "top_k": 2, "capacity_factor": 0.5}
    model = fl.build_model(
        {"kind": "decoder_lm", "vocab_size": 13, "dim": 16, "depth": 2, "num_heads": 2,
         "max_seq_len": 16, "ffn": ffn}
    ).double().eval()  # fmt: skip
    ids = torch.randint(0, 13, (3, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 13
    with torch.no_grad():
        a, b = model(ids), model(changed)
    _, metrics = collect_aux(model)
    assert metrics["moe_dropped_frac"] > 0
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-12)


def test_parameter_counts_total_and_active() -> None:
    cfg = {"kind": "decoder_lm", "vocab_size": 13, "dim": 16, "depth": 2, "num_heads": 2}
    dense = fl.build_model({**cfg, "ffn": {"kind": "mlp"}})
    moe = fl.build_model({**cfg, "ffn": {"kind": "moe", "num_experts": 4, "top_k": 2}})
    counts = parameter_counts(moe)
    expert = sum(p.numel() for p in moe.transformer.blocks[0].ffn.experts[0].parameters())
    assert counts["total"] == sum(p.numel() for p in moe.parameters())
    assert counts["total"] - counts["active"] == 2 * (4 - 2) * expert
    router = 16 * 4
    d = parameter_counts(dense)
    assert d["active"] == d["total"] and counts["active"] == d["total"] + 2 * (expert + router)


def test_describe_reports_parameter_counts_of_the_default_config() -> None:
    info = fl.describe("ffn", "moe")
    counts = info["extra"]["params_at_dim_256"]
    expert = 2 * 256 * 1024 + 1024 + 256  # mlp mult 4 with biases
    assert counts["total"] == 8 * expert + 256 * 8
    assert counts["active"] == expert + 256 * 8
    assert "active per token" in info["extra"]["parameters"]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"num_experts": 0}, r"num_experts: invalid value 0; allowed: >= 1"),
        ({"top_k": 3}, r"top_k: invalid value 3; allowed: 1 or 2"),
        ({"num_experts": 1, "top_k": 2}, r"top_k: invalid value 2.*at most num_experts=1"),
        ({"capacity_factor": 0}, r"capacity_factor: invalid value 0.0; allowed: null or > 0"),
        ({"aux_loss_weight": -1}, r"aux_loss_weight: invalid value -1.0; allowed: >= 0"),
        ({"z_loss_weight": -0.1}, r"z_loss_weight: invalid value -0.1; allowed: >= 0"),
        ({"router_jitter": 1.0}, r"router_jitter: invalid value 1.0; allowed: 0 <= eps < 1"),
        ({"expert": {"kind": "moe"}}, r"expert.kind: invalid value 'moe'"),
        ({"expert": {"kind": "mlp", "mult": 0}}, r"ffn.expert.mult: 0"),
    ],
)
def test_invalid_config_names_the_field_path(fields, match) -> None:
    with pytest.raises(fl.ConfigError, match=match):
        MoEConfig.from_dict({"kind": "moe", **fields}, "ffn")


def test_bad_model_config_fails_before_building() -> None:
    with pytest.raises(fl.ConfigError, match=r"model\.ffn\.top_k"):
        fl.load_config({"model": {"kind": "decoder_lm", "ffn": {"kind": "moe", "top_k": 5}}})


def test_glu_experts_when_registered() -> None:
    if "glu" not in fl.list_registered("ffn"):
        pytest.skip("ffn kind 'glu' is not registered")
    moe = make_moe(top_k=2, capacity_factor=0.75, expert={"kind": "glu"})
    assert type(moe.experts[0]).__name__ != "MLP"
    x = inputs(3, 5)
    torch.testing.assert_close(moe(x), moe.dense_reference(x), rtol=0, atol=1e-13)


def test_idle_experts_get_zero_gradients_not_none() -> None:
    moe = make_moe(capacity_factor=1.0)
    _all_to_expert_zero(moe)
    moe(inputs(6).abs()).sum().backward()
    for e, expert in enumerate(moe.experts):
        grads = [p.grad for p in expert.parameters()]
        assert all(g is not None for g in grads)
        assert any(g.abs().sum() > 0 for g in grads) == (e == 0)


def test_empty_input_gives_empty_output_and_no_stale_record() -> None:
    moe = make_moe()
    moe(inputs(2, 3))
    out = moe(inputs(0, 3))
    assert out.shape == (0, 3, DIM)
    assert collect_aux(moe) == (None, {})
