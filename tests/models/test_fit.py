"""FIT (Chen & Li, 2023, arXiv:2305.12689): reduction to a standard stack, causality, padding,
attention FLOP accounting and config errors."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.errors import ConfigError, InputError
from formerlab.models.fit import attention_flops, full_attention_flops

TINY = dict(vocab_size=37, dim=16, depth=2, num_heads=2, max_seq_len=24)


def fit(**overrides) -> torch.nn.Module:
    cfg = {"kind": "fit", **TINY, "head": {"kind": "none"}, **overrides}
    torch.manual_seed(0)
    return fl.build_model(cfg).double().eval()


def ids(batch: int = 3, length: int = 21, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def test_defaults_build_from_the_contract_fields_in_both_modes() -> None:
    for mode, shape in (("encoder", (2, 2)), ("decoder_lm", (2, 21, 37))):
        model = fl.build_model({"kind": "fit", **TINY, "mode": mode})
        assert (
            model.config.to_dict() == type(model.config).from_dict(model.config.to_dict()).to_dict()
        )
        assert tuple(model(ids(2)).shape) == shape


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_one_group_without_latents_equals_a_standard_stack(position: str) -> None:
    """G = 1 (group_size >= L, the last group padded and masked) and global_layers = 0: FIT is the
    standard encoder of depth * local_layers blocks with the same weights."""
    common = {**TINY, "position": {"kind": position}, "head": {"kind": "none"}}
    torch.manual_seed(0)
    encoder = fl.build_model({"kind": "encoder", **common, "depth": 4}).double().eval()
    model = fl.build_model(
        {"kind": "fit", **common, "group_size": 24, "local_layers": 2, "global_layers": 0}
    ).double()
    state = {}
    for name, value in encoder.state_dict().items():
        if name.startswith("transformer.blocks."):
            _, _, i, rest = name.split(".", 3)
            name = f"blocks.{int(i) // 2}.local.{int(i) % 2}.{rest}"
        state[name] = value
    model.load_state_dict(state)
    x = ids(length=19)  # padded to one group of 24 inside fit
    torch.testing.assert_close(model.eval().encode(x), encoder.encode(x), rtol=1e-12, atol=1e-12)


def test_causal_fit_never_sees_the_future() -> None:
    model = fit(mode="decoder_lm", group_size=4, latents_per_group=2, global_layers=2)
    x = ids(length=22)
    base = model(x)
    for t in (1, 3, 4, 9, 21):  # inside a group, group starts and ends, the padded last group
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % TINY["vocab_size"]
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-12)
        assert (out[:, t:] - base[:, t:]).abs().max() > 1e-6


def test_information_crosses_groups_only_through_latents() -> None:
    x = ids(length=16)
    changed = x.clone()
    changed[:, 1] = (changed[:, 1] + 1) % TINY["vocab_size"]
    for global_layers, reaches in ((1, True), (0, False)):
        model = fit(group_size=4, global_layers=global_layers)
        delta = (model.encode(changed) - model.encode(x))[:, 4:].abs().max()
        assert (delta > 1e-8) == reaches


def test_causal_data_read_the_previous_groups_latents() -> None:
    """A change in group 1 reaches group 2 (through the shifted latents) but not group 0 or 1's past."""
    model = fit(mode="decoder_lm", group_size=4)
    x = ids(length=12)
    changed = x.clone()
    changed[:, 5] = (changed[:, 5] + 1) % TINY["vocab_size"]
    delta = (model(changed) - model(x)).abs().amax(dim=(0, 2))
    assert delta[:5].max() < 1e-12 and delta[8:].min() > 1e-8


@pytest.mark.parametrize("mode", ["encoder", "decoder_lm"])
def test_padded_batch_equals_each_sequence_alone(mode: str) -> None:
    """Right padding: real tokens' outputs equal the unpadded run (groups start at position 0)."""
    model = fit(mode=mode, group_size=4)
    seqs = [ids(1, n, seed=n)[0] for n in (5, 12, 9)]
    batch = torch.zeros(3, 12, dtype=torch.long)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    for i, s in enumerate(seqs):
        batch[i, : len(s)], mask[i, : len(s)] = s, True
    padded = model.encode(batch, attention_mask=mask)
    for i, s in enumerate(seqs):
        alone = model.encode(s[None])
        torch.testing.assert_close(padded[i, : len(s)], alone[0], rtol=1e-10, atol=1e-10)


def test_left_padded_causal_rows_see_no_future_and_generate_runs() -> None:
    model = fit(mode="decoder_lm", group_size=4)
    x = ids(2, 10)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, :6] = False  # two whole groups of padding, then a partial one
    base = model(x, mask)
    changed = x.clone()
    changed[0, 8] = (changed[0, 8] + 1) % TINY["vocab_size"]
    torch.testing.assert_close(model(changed, mask)[0, 6:8], base[0, 6:8], rtol=0, atol=1e-12)
    out = model.generate([[1, 2, 3], [4, 5, 6, 7, 8]], max_new_tokens=3)
    assert [len(r) for r in out] == [6, 8]
    assert out[0][:3] == [1, 2, 3]


def test_attention_flops_count_the_parts() -> None:
    cfg = fit(group_size=8, latents_per_group=2, local_layers=2, global_layers=3).config
    L, n, m, d, depth = 20, 8, 2, 16, 2
    G = math.ceil(L / n)
    per_block = 2 * G * n * n + 3 * (G * m) ** 2 + 2 * G * m * n
    assert attention_flops(cfg, L) == 4 * d * depth * per_block
    assert full_attention_flops(L, d, 3) == 4 * d * 3 * L * L


def test_cost_grows_as_l_to_the_four_thirds_with_cube_root_groups() -> None:
    """n = 4 L^(1/3), m fixed: both the local and the global cost are Theta(L^(4/3))."""
    lengths = [2**k for k in range(12, 22, 3)]
    costs = []
    for L in lengths:
        n = round(4 * L ** (1 / 3))
        cfg = fit(group_size=8).config.__class__.from_dict(
            {"kind": "fit", **TINY, "max_seq_len": L, "group_size": n, "latents_per_group": 4}
        )
        costs.append(attention_flops(cfg, L))
    slope = math.log(costs[-1] / costs[0]) / math.log(lengths[-1] / lengths[0])
    assert 1.3 < slope < 1.37


def test_generate_and_cache_are_refused_where_they_do_not_apply() -> None:
    with pytest.raises(InputError, match="mode 'decoder_lm'"):
        fit().generate([[1, 2]], max_new_tokens=1)
    model = fit(mode="decoder_lm")
    with pytest.raises(InputError, match="no KV cache"):
        model(ids(), cache={})
    with pytest.raises(InputError, match="max_seq_len"):
        model(ids(length=25))


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"group_size": 0}, "model.group_size"),
        ({"latents_per_group": 0}, "model.latents_per_group"),
        ({"local_layers": -1}, "model.local_layers"),
        ({"local_layers": 0, "global_layers": 0}, "model.local_layers"),
        ({"mode": "decoder_lm", "attention": {"kind": "linformer"}}, "model.attention.kind"),
        ({"cross_attention": {"kind": "local"}}, "model.cross_attention.kind"),
        ({"norm": {"kind": "crmsnorm"}}, "model.norm.kind"),
        ({"mode": "sideways"}, "model.mode"),
    ],
)
def test_config_errors_name_the_field(override: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        fl.build_model({"kind": "fit", **TINY, **override})


def test_padding_needs_a_masking_attention_kind(monkeypatch) -> None:
    import formerlab.models.fit as fit_module

    model = fit(group_size=4)
    monkeypatch.setattr(fit_module, "capability", lambda cfg, name: False)
    model.encode(ids(length=8))  # a multiple of group_size: no padding, no mask needed
    with pytest.raises(InputError, match="not a multiple of group_size=4"):
        model.encode(ids(length=9))
    causal = fit(mode="decoder_lm", group_size=4)
    causal.encode(ids(length=9))  # causal: the padded tail is never seen, no mask needed
