"""Models: identities with Hugging Face GPT-2, save/load, padding, input checks, transforms."""

from __future__ import annotations

import pytest
import torch

import formerlab as fl


def test_gpt_small_cpu_preset_matches_the_issue() -> None:
    cfg = fl.build_model("gpt-small-cpu").config
    assert (cfg.vocab_size, cfg.dim, cfg.depth, cfg.num_heads, cfg.max_seq_len) == (
        256,
        256,
        4,
        4,
        256,
    )
    assert cfg.ffn.mult == 4 and cfg.ffn.activation == "gelu" and cfg.norm.kind == "layernorm"
    assert cfg.norm_placement == "pre" and cfg.position.kind == "learned" and cfg.tie_embeddings
    assert cfg.dropout == 0 and cfg.attention.dropout == 0


def gpt2_state_from(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our decoder_lm weights in Hugging Face GPT-2 names (Conv1D stores W transposed)."""
    sd = model.state_dict()
    out = {
        "transformer.wte.weight": sd["transformer.embed.weight"],
        "transformer.wpe.weight": sd["transformer.position.embedding.weight"],
        "transformer.ln_f.weight": sd["transformer.final_norm.weight"],
        "transformer.ln_f.bias": sd["transformer.final_norm.bias"],
        "lm_head.weight": sd["transformer.embed.weight"],
    }
    names = {
        "ln_1": "attn_norm",
        "ln_2": "ffn_norm",
        "attn.c_attn": "attn.qkv_proj",
        "attn.c_proj": "attn.out_proj",
        "mlp.c_fc": "ffn.fc1",
        "mlp.c_proj": "ffn.fc2",
    }
    for i in range(model.config.depth):
        for hf, ours in names.items():
            w = sd[f"transformer.blocks.{i}.{ours}.weight"]
            out[f"transformer.h.{i}.{hf}.weight"] = w if hf.startswith("ln") else w.t().contiguous()
            out[f"transformer.h.{i}.{hf}.bias"] = sd[f"transformer.blocks.{i}.{ours}.bias"]
    return out


def test_decoder_lm_equals_hugging_face_gpt2_in_float64() -> None:
    transformers = pytest.importorskip("transformers")
    ours = (
        fl.build_model(
            {**fl.models.preset_dict("gpt-small-cpu"), "dim": 64, "depth": 2, "max_seq_len": 32}
        )
        .double()
        .eval()
    )
    hf_cfg = transformers.GPT2Config(
        vocab_size=256,
        n_positions=32,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_inner=256,
        activation_function="gelu",
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
        layer_norm_epsilon=1e-5,
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).double().eval()
    missing, unexpected = hf.load_state_dict(gpt2_state_from(ours), strict=False)
    assert not unexpected and all("attn.bias" in k or "masked_bias" in k for k in missing)
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=1e-10, atol=1e-10)


def test_save_and_load_round_trip_is_exact(tmp_path) -> None:
    model = fl.build_model("llama-small-cpu").double()
    fl.save_pretrained(model, tmp_path / "m")
    loaded = fl.from_pretrained(tmp_path / "m").double()
    assert loaded.config == model.config
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model.eval()(ids), rtol=0, atol=0)
    assert not list((tmp_path / "m").glob(".*tmp*"))


def test_tied_weights_stay_tied_after_loading(tmp_path) -> None:
    fl.save_pretrained(fl.build_model("gpt-tiny"), tmp_path)
    loaded = fl.from_pretrained(tmp_path)
    assert loaded.lm_head is None
    with torch.no_grad():
        loaded.transformer.embed.weight[0, 0] = 123.0
    assert loaded.logits(torch.eye(64)[None, :1])[0, 0, 0] == 123.0


def test_from_pretrained_errors_are_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(fl.CheckpointError, match="config.yaml"):
        fl.from_pretrained(tmp_path)
    fl.save_pretrained(fl.build_model("gpt-tiny"), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(fl.CheckpointError, match="cannot load"):
        fl.from_pretrained(tmp_path)


def test_input_errors_come_before_compute() -> None:
    model = fl.build_model("gpt-tiny")
    with pytest.raises(fl.InputError, match="token id 300 out of range; allowed: 0..255"):
        model(torch.tensor([[1, 300]]))
    with pytest.raises(fl.InputError, match="exceeds max_seq_len=128"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(fl.InputError, match="integer tensor"):
        model(torch.zeros(1, 4))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_ignores_padding(pooling: str) -> None:
    model = (
        fl.build_model(
            {
                **fl.models.preset_dict("bert-small-cpu"),
                "dim": 32,
                "depth": 2,
                "head": {"kind": "classifier", "num_classes": 3, "pooling": pooling},
            }
        )
        .double()
        .eval()
    )
    ids = torch.randint(0, 256, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.arange(10)[None] < 6
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask), model(ids), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("head", "shape"),
    [
        ({"kind": "token_classifier", "num_classes": 5}, (2, 7, 5)),
        ({"kind": "mlm"}, (2, 7, 256)),
        ({"kind": "mlm", "tie_embeddings": False}, (2, 7, 256)),
        ({"kind": "none"}, (2, 7, 32)),
    ],
)
def test_encoder_heads(head: dict, shape: tuple) -> None:
    model = fl.build_model({"kind": "encoder", "dim": 32, "depth": 1, "num_heads": 2, "head": head})
    assert model(torch.randint(0, 256, (2, 7))).shape == shape


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_norm_placement_changes_the_function(placement: str) -> None:
    base = {"kind": "decoder_lm", "dim": 32, "depth": 2, "num_heads": 2}
    torch.manual_seed(0)
    a = fl.build_model({**base, "norm_placement": placement})
    torch.manual_seed(0)
    b = fl.build_model({**base, "norm_placement": "post" if placement == "pre" else "pre"})
    ids = torch.randint(0, 256, (1, 5))
    assert isinstance(a.transformer.final_norm, torch.nn.Identity) == (placement == "post")
    assert not torch.allclose(a(ids), b(ids))


def test_untie_transform_keeps_outputs_and_separates_parameters() -> None:
    model = fl.build_model("gpt-tiny").double().eval()
    new = fl.transform(model, {"kind": "untie_embeddings"})
    assert new is not model and new.config.tie_embeddings is False and model.config.tie_embeddings
    ids = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(new(ids), model(ids), rtol=1e-12, atol=1e-12)
        new.lm_head.weight.add_(torch.randn_like(new.lm_head.weight))
        assert not torch.allclose(new(ids), model(ids))
    with pytest.raises(fl.ConfigError, match="tie_embeddings"):
        fl.transform(new, {"kind": "untie_embeddings"})
    with pytest.raises(fl.ConfigError, match="unknown transform kind 'nope'; registered: "):
        fl.transform(model, {"kind": "nope"})


def test_gqa_reduces_key_value_parameters() -> None:
    full = fl.build_model({"kind": "decoder_lm", "dim": 32, "num_heads": 4, "depth": 1})
    gqa = fl.build_model(
        {
            "kind": "decoder_lm",
            "dim": 32,
            "num_heads": 4,
            "depth": 1,
            "attention": {"kind": "softmax", "num_kv_heads": 1},
        }
    )
    assert gqa.transformer.blocks[0].attn.qkv_proj.weight.shape == (32 + 2 * 8, 32)
    assert full.transformer.blocks[0].attn.qkv_proj.weight.shape == (96, 32)
