"""The plumbing the model kinds share (``models.encoder`` and ``models.decoder_lm`` helpers used by
``encoder``, ``looped``, ``fit``, ``decoder_lm``, ``looped_lm``): a padding mask the attention kind
cannot apply is refused before any compute, and ``logits(h, last_only=True)`` is the last row."""

from __future__ import annotations

import pytest
import torch

import formerlab as fl
import formerlab.models.encoder as encoder_module
from formerlab.errors import InputError

TINY = dict(vocab_size=19, dim=16, num_heads=2, max_seq_len=16, depth=2)
ENCODERS = {
    "encoder": {"kind": "encoder"},
    "looped": {"kind": "looped", "loops": 2},
    "fit": {"kind": "fit", "group_size": 4},
}
CAUSAL = {
    "decoder_lm": {"kind": "decoder_lm"},
    "decoder_lm_untied": {"kind": "decoder_lm", "tie_embeddings": False},
    "looped_lm": {"kind": "looped_lm", "loops": 3, "pre_depth": 1},
    "fit_decoder": {"kind": "fit", "mode": "decoder_lm", "group_size": 4},
}


def build(cfg: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return fl.build_model({**TINY, **cfg}).double().eval()


def ids(batch: int = 2, length: int = 8) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=torch.Generator())


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_a_mask_the_attention_cannot_apply_is_refused_before_compute(name, monkeypatch) -> None:
    model = build(ENCODERS[name])
    x = ids()
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, -2:] = False
    embedded = []
    model.transformer.embed.register_forward_pre_hook(lambda *_: embedded.append(1))
    model(x, mask)  # softmax applies padding masks
    assert embedded
    embedded.clear()
    monkeypatch.setattr(
        encoder_module, "capability", lambda cfg, name: name != "supports_padding_mask"
    )
    with pytest.raises(
        InputError, match=r"attention_mask: attention 'softmax' lacks supports_padding_mask"
    ):
        model(x, mask)
    assert not embedded  # nothing was computed
    assert model(x).shape[0] == x.size(0)  # without a mask the model still runs


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_logits_of_the_last_position_are_the_last_row(name) -> None:
    model = build(CAUSAL[name])
    h = torch.randn(3, 5, TINY["dim"], dtype=torch.float64)
    full = model.logits(h)
    assert full.shape == (3, 5, TINY["vocab_size"])
    last = model.logits(h, last_only=True)
    assert last.shape == (3, 1, TINY["vocab_size"])
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-12, atol=1e-12)
    x = ids(length=7)
    torch.testing.assert_close(model(x, last_only=True), model(x)[:, -1:], rtol=1e-12, atol=1e-12)
