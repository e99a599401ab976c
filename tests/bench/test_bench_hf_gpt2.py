"""benchmarks/hf_gpt2_speed.py at tiny sizes: same-size GPT-2 mirror, one JSON object, ratios."""

from __future__ import annotations

import json
import math

import pytest

from formerlab.errors import ConfigError

pytest.importorskip("transformers")

TINY_ARGS = ["--preset", "gpt-tiny", "--batch-size", "2", "--seq-len", "16", "--warmup", "1",
             "--train-repeats", "1", "--fwd-warmup", "0", "--fwd-repeats", "1", "--gen-repeats", "1",
             "--prompt-len", "4", "--new-tokens", "5", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def hf_speed(load_benchmark):
    return load_benchmark("hf_gpt2_speed")


def test_main_prints_one_json_object(hf_speed, capsys):
    assert hf_speed.main(TINY_ARGS) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) == {"formerlab", "hf_gpt2", "ratio"}
    fl, hf = result["formerlab"], result["hf_gpt2"]
    assert fl["params"] == hf["params"]  # the GPT-2 mirror has exactly the same size
    assert hf["attn_implementation"] == "sdpa"
    for key in hf_speed.SPEEDS:
        assert fl[key] > 0 and hf[key] > 0 and math.isfinite(fl[key] + hf[key])
        assert result["ratio"][key] == pytest.approx(fl[key] / hf[key])


def test_gpt2_mirror_matches_formerlab_layout(hf_speed):
    import torch

    from formerlab import build_model
    from formerlab.models import ModelConfig, preset_dict

    cfg = ModelConfig.from_dict(preset_dict("gpt-small-cpu"))
    gpt2 = hf_speed.build_gpt2(cfg, seed=0)
    ours = build_model(cfg)
    assert sum(p.numel() for p in gpt2.parameters()) == sum(p.numel() for p in ours.parameters())
    assert gpt2.config.n_inner == 1024 and gpt2.config.n_positions == 256
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight  # tied embeddings
    prompt = torch.zeros(1, 4, dtype=torch.long)
    out = gpt2.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                        max_new_tokens=6, min_new_tokens=6, use_cache=True)  # fmt: skip
    assert out.shape == (1, 10)


@pytest.mark.parametrize(
    ("preset", "extra", "match"),
    [
        ("llama-small-cpu", {}, "model.norm.kind: invalid value 'rmsnorm' for a GPT-2 reference"),
        ("gpt-tiny", {"seq_len": 200}, "bench.seq_len: invalid value 200"),
        ("gpt-tiny", {"rounds": 0}, "rounds: invalid value 0"),
    ],
)
def test_rejected_before_compute(hf_speed, monkeypatch, preset, extra, match):
    monkeypatch.setattr(hf_speed, "run_protocol", lambda *a, **k: pytest.fail("computed"))
    monkeypatch.setattr(hf_speed, "speed_benchmark", lambda *a, **k: pytest.fail("computed"))
    rounds = extra.pop("rounds", 1)
    with pytest.raises(ConfigError, match=match):
        hf_speed.compare(preset, rounds, **extra)


def test_main_reports_error_in_one_line(hf_speed, capsys):
    assert hf_speed.main(["--preset", "llama-small-cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model.norm.kind")
