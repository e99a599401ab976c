"""The ``matformer`` nested FFN (Devvrit, Kudugunta, Kusupati et al., 2023): sliced forwards against
hand-written references in float64, plain-model state-dict compatibility, the granularity context,
the training passes (sum / sample), the trainer hook and exact resume with ``mode: sample``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import formerlab as fl
from formerlab.layers.ffn.glu import GLU, GLUConfig
from formerlab.layers.ffn.matformer import (
    MatFormerConfig,
    MatFormerFFN,
    matformer_granularity,
    nested_ffns,
    sample_granularity,
)
from formerlab.layers.ffn.mlp import MLP, MLPConfig
from formerlab.layers.linear import DenseConfig
from formerlab.train import trainer as tr

GRANS = [0.125, 0.25, 0.5, 1.0]
MODEL = {"kind": "decoder_lm", "vocab_size": 19, "dim": 16, "depth": 3, "num_heads": 2}


def nested(inner: dict, dim: int = 16, **cfg) -> MatFormerFFN:
    torch.manual_seed(0)
    config = MatFormerConfig.from_dict({"kind": "matformer", "inner": inner, **cfg})
    ffn = MatFormerFFN(config, dim=dim, linear=DenseConfig()).double()
    for name, p in ffn.named_parameters():
        if name.endswith("bias"):  # non-zero biases, so a wrongly sliced bias would show
            torch.nn.init.normal_(p)
    return ffn


def model(mode: str = "sum", grans=GRANS, **extra) -> torch.nn.Module:
    ffn = {"kind": "matformer", "granularities": grans, "mode": mode}
    torch.manual_seed(0)
    return fl.build_model({**MODEL, "ffn": ffn, **extra}).double()


@pytest.mark.parametrize("g", GRANS)
def test_mlp_inner_sliced_forward_in_float64(g: float) -> None:
    ffn = nested({"kind": "mlp", "activation": "relu"})
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    m = int(g * 64)
    h = (x @ ffn.fc1.weight[:m].T + ffn.fc1.bias[:m]).clamp(min=0)
    expected = h @ ffn.fc2.weight[:, :m].T + ffn.fc2.bias
    ffn.granularity = g
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)
    assert ffn.width(g) == m


@pytest.mark.parametrize("g", GRANS)
def test_glu_inner_sliced_forward_in_float64(g: float) -> None:
    ffn = nested({"kind": "glu", "multiple_of": 8, "bias": True, "gate_activation": "sigmoid"})
    assert ffn.hidden == 48  # 2/3 * 4 * 16 = 42.7 -> 43 -> 48
    x = torch.randn(7, 16, dtype=torch.float64)
    m = round(g * 48)
    gate = x @ ffn.gate.weight[:m].T + ffn.gate.bias[:m]
    up = x @ ffn.up.weight[:m].T + ffn.up.bias[:m]
    expected = (torch.sigmoid(gate) * up) @ ffn.fc2.weight[:, :m].T + ffn.fc2.bias
    ffn.granularity = g
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("inner", "plain_cls", "cfg_cls"),
    [({"kind": "mlp"}, MLP, MLPConfig), ({"kind": "glu", "bias": True}, GLU, GLUConfig)],
)
def test_full_width_is_the_plain_ffn_with_the_same_state_dict(inner, plain_cls, cfg_cls) -> None:
    ffn = nested(inner)
    plain = plain_cls(cfg_cls.from_dict(inner), dim=16, linear=DenseConfig()).double()
    assert list(plain.state_dict()) == list(ffn.state_dict())  # same names: fc1/fc2, gate/up/fc2
    plain.load_state_dict(ffn.state_dict())
    x = torch.randn(3, 16, dtype=torch.float64)
    assert ffn.granularity is None
    torch.testing.assert_close(ffn(x), plain(x), rtol=0, atol=1e-14)


def test_a_plain_model_loads_into_the_nested_model() -> None:
    torch.manual_seed(1)
    plain = fl.build_model(MODEL).double()
    nest = model()
    nest.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 19, (2, 9))
    torch.testing.assert_close(nest(ids), plain(ids), rtol=0, atol=1e-12)


def test_smaller_granularities_change_the_output_and_zeroed_tail_matches() -> None:
    """Slicing to m units equals zeroing units m.. of the full FFN: the tail is really cut off."""
    ffn = nested({"kind": "mlp"})
    x = torch.randn(4, 16, dtype=torch.float64)
    full = ffn(x)
    ffn.granularity = 0.25
    small = ffn(x)
    assert (small - full).abs().max() > 1e-6
    with torch.no_grad():
        ffn.fc2.weight[:, 16:] = 0
    ffn.granularity = None
    torch.testing.assert_close(ffn(x), small, rtol=0, atol=1e-13)


def test_granularity_context_sets_every_layer_and_restores() -> None:
    m = model()
    ids = torch.randint(0, 19, (2, 8))
    full = m(ids)
    with matformer_granularity(m, 0.25):
        assert [layer.granularity for layer in nested_ffns(m)] == [0.25] * 3
        small = m(ids)
    assert [layer.granularity for layer in nested_ffns(m)] == [None] * 3
    torch.testing.assert_close(m(ids), full, rtol=0, atol=0)
    assert (small - full).abs().max() > 1e-6
    with pytest.raises(RuntimeError, match="boom"), matformer_granularity(m, [0.5, 1.0, 0.125]):
        assert [layer.granularity for layer in nested_ffns(m)] == [0.5, 1.0, 0.125]
        raise RuntimeError("boom")
    assert [layer.granularity for layer in nested_ffns(m)] == [None] * 3


def test_eval_uses_full_width_unless_set() -> None:
    m = model().eval()
    ids = torch.randint(0, 19, (1, 6))
    with matformer_granularity(m, 1.0):
        explicit = m(ids)
    torch.testing.assert_close(m(ids), explicit, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0.3, r"granularity\[0\]: 0\.3 is not a granularity of layer 0; allowed: 0\.125, 0\.25"),
        ([0.25, 0.5], r"granularity: 2 values for 3 matformer layers; allowed: .* exactly 3"),
        ([0.25, 0.5, 0.7], r"granularity\[2\]: 0\.7 is not a granularity"),
        (True, r"granularity\[0\]: True is not a granularity"),
    ],
)
def test_granularity_errors(value, match) -> None:
    m = model()
    with pytest.raises(fl.ConfigError, match=match), matformer_granularity(m, value):
        pass
    assert [layer.granularity for layer in nested_ffns(m)] == [None] * 3


def test_granularity_needs_a_matformer_model() -> None:
    plain = fl.build_model(MODEL)
    with pytest.raises(fl.ConfigError, match="no matformer FFN"), matformer_granularity(plain, 1.0):
        pass


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"granularities": []}, r"granularities: empty"),
        ({"granularities": [0.0, 1.0]}, r"granularities\[0\]: 0\.0; allowed: 0 < fraction <= 1"),
        ({"granularities": [0.5, 0.25, 1.0]}, r"granularities\[1\]: 0\.25 is not above 0\.5"),
        ({"granularities": [0.25, 0.5]}, r"granularities\[1\]: 0\.5; allowed: the last .* 1\.0"),
        ({"inner": {"kind": "matformer"}}, r"inner\.kind: 'matformer' cannot be nested; allowed"),
        ({"mode": "mean"}, r"mode: invalid value 'mean'; allowed: 'sum' \| 'sample'"),
    ],
)
def test_bad_configs_name_the_field(cfg, match) -> None:
    with pytest.raises(fl.ConfigError, match=r"model\.ffn\." + match):
        fl.load_config({"model": {**MODEL, "ffn": {"kind": "matformer", **cfg}}, "task": "copy"})


def test_granularities_that_collapse_to_one_width_are_refused_at_build() -> None:
    with pytest.raises(fl.ConfigError, match=r"give the widths \[1, 1, 64\]"):
        fl.build_model({**MODEL, "ffn": {"kind": "matformer", "granularities": [0.01, 0.02, 1.0]}})


def test_sum_mode_runs_every_granularity_once_per_micro_batch() -> None:
    m = model("sum")
    passes = tr.training_passes(m, step=5, seed=0)
    seen = []
    for weight, context in passes:
        assert weight == 1.0
        with context:
            seen.append(nested_ffns(m)[0].granularity)
    assert seen == GRANS


def test_sample_mode_is_a_pure_function_of_seed_and_step() -> None:
    cfg = MatFormerConfig.from_dict({"kind": "matformer", "mode": "sample"})
    draws = [sample_granularity(cfg, step, 0) for step in range(200)]
    assert draws == [sample_granularity(cfg, step, 0) for step in range(200)]
    assert set(draws) == set(GRANS)  # every granularity gets trained
    assert draws != [sample_granularity(cfg, step, 1) for step in range(200)]
    m = model("sample")
    for step in (0, 7, 31):
        ((_, context),) = tr.training_passes(m, step, 3)
        with context:
            assert nested_ffns(m)[1].granularity == sample_granularity(cfg, step, 3)


def test_plain_models_train_in_one_plain_pass() -> None:
    ((weight, context),) = tr.training_passes(fl.build_model(MODEL), 0, 0)
    assert weight == 1.0
    with context:
        pass


def test_layers_that_disagree_cannot_share_a_training_granularity() -> None:
    ffns = [{"kind": "matformer", "granularities": g} for g in ([0.5, 1.0], [0.5, 1.0], [1.0])]
    m = fl.build_model({**MODEL, "layer_ffns": ffns})
    with pytest.raises(fl.ConfigError, match=r"layer_ffns\[2\]: granularities \[1\.0\]"):
        tr.training_passes(m, 0, 0)


def test_norm_conversion_stays_exact_at_every_granularity() -> None:
    """The nested FFN declares its stream ports: Pre-LN -> Pre-CRMSNorm keeps every submodel."""
    m = model().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.normal_()
    converted = fl.transform(m, {"kind": "pre_ln_to_crmsnorm"})
    ids = torch.randint(0, 19, (2, 7))
    for g in GRANS:
        with matformer_granularity(m, g), matformer_granularity(converted, g):
            torch.testing.assert_close(converted(ids), m(ids), rtol=0, atol=1e-12)


# -- the trainer -------------------------------------------------------------------------------


def run_cfg(mode: str, **train) -> fl.RunConfig:
    ffn = {"kind": "matformer", "granularities": [0.25, 0.5, 1.0], "mode": mode}
    base = {
        "steps": 6,
        "batch_size": 4,
        "grad_accum": 2,
        "log_every": 1,
        "eval_every": 0,
        "checkpoint_every": 3,
        "threads": 1,
        "optimizer": {"kind": "adamw", "lr": 3e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 1},
    }
    return fl.load_config(
        {
            "model": {**MODEL, "depth": 2, "max_seq_len": 16, "ffn": ffn},
            "task": {"kind": "copy", "seq_len": 16},
            "train": {**base, **train},
        }
    )


def test_trainer_sum_mode_gradient_is_the_sum_over_granularities(tmp_path: Path) -> None:
    run = run_cfg("sum", grad_accum=1)
    task, m = tr._build(run, tmp_path)
    trainer = tr.Trainer(run, tmp_path, task, m)
    loss = trainer.forward_backward(0)
    got = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    batch = task.batch("train", 0, 4)
    total = 0.0
    for g in [0.25, 0.5, 1.0]:
        with matformer_granularity(m, g):
            part, _ = task.loss(m, batch)
        part.backward()
        total += float(part.detach())
    assert loss == pytest.approx(total, rel=1e-6)
    for a, p in zip(got, m.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-7)
    assert trainer.state.tokens == 4 * 16  # a micro-batch counts its tokens once


def records(out: Path) -> list[dict]:
    timing = set(tr.TIMING_FIELDS)
    rows = tr.read_metrics(out / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


def test_sample_mode_resumes_exactly(tmp_path: Path) -> None:
    run = run_cfg("sample")
    tr.train(run, tmp_path / "ref", progress=False)
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "ref", out)
    shutil.rmtree(out / "checkpoints" / "step_6")
    summary = tr.train(run, out, resume=True, progress=False)
    assert summary["start_step"] == 3
    assert records(out) == records(tmp_path / "ref")
    draws = {sample_granularity(run.model.ffn, s, run.train.seed) for s in range(6)}
    assert len(draws) > 1  # the steps really ran at different widths
