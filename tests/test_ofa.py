"""OFA-Diffusion channel orders and width slicing on tiny real diffusers models."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiTTransformer2DModel, UNet2DModel
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from fine_deploy.backbones import ofa_unet2d as ofa
from fine_deploy.errors import FineDeployError

TINY = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)


def _trained_like(model: nn.Module, seed: int, sigma: float = 1.0) -> nn.Module:
    """Give consumers' input channels log-normal scales, as training does (a fresh init has none).

    On an untrained net every channel's magnitude is the same up to noise, so no order can beat its
    reverse there; this stands in for the uneven channel scales of a trained checkpoint.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            skip = name.startswith(("conv_in", "time_")) or name.endswith("time_emb_proj")
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and not skip:
                s = torch.exp(sigma * torch.randn(mod.weight.shape[1], generator=gen))
                mod.weight.mul_(s.view(1, -1, *([1] * (mod.weight.ndim - 2))))
    return model


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return _trained_like(UNet2DModel(**TINY).eval(), seed=0)


@pytest.fixture(scope="module")
def orders(unet):
    groups = ofa.channel_groups(unet)
    return ofa.channel_orders(ofa.channel_importance(unet, groups))


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=gen), torch.tensor([10, 200, 500, 900])


def _out(model, inputs):
    with torch.no_grad():
        return model(*inputs).sample


def test_groups_come_from_the_dependency_graph(unet):
    groups = ofa.channel_groups(unet)
    keys = {g.key for g in groups}
    # a resnet's inner pipe couples conv1 out, time_emb_proj out, norm2 and conv2 in
    pipe = next(g for g in groups if g.key == "down_blocks.1.resnets.0.conv1")
    assert {(m.param, m.dim) for m in pipe.members} >= {
        ("down_blocks.1.resnets.0.conv1.weight", 0),
        ("down_blocks.1.resnets.0.time_emb_proj.weight", 0),
        ("down_blocks.1.resnets.0.norm2.weight", 0),
        ("down_blocks.1.resnets.0.conv2.weight", 1),
    }
    attn = next(g for g in groups if g.key == "down_blocks.1.attentions.0.to_v")
    assert attn.unit == 8 and {m.param for m in attn.members} >= {
        "down_blocks.1.attentions.0.to_q.weight",
        "down_blocks.1.attentions.0.to_out.0.weight",
    }
    # stage 2's residual stream is the same index space as stage 1's downsampler output (identity shortcut)
    stream = next(g for g in groups if g.key == "down_blocks.1.downsamplers.0.conv")
    assert {m.stage for m in stream.members} == {1, 2}
    # concatenated skips enter up blocks at an offset
    assert any(m.offset == 64 and m.param.startswith("up_blocks.0.resnets.1.conv1") for m in stream.members)
    # stage 0, the time embedding and conv_out never change width
    assert all(g.stage >= 1 for g in groups) and not any(k.startswith(("time_", "conv_")) for k in keys)
    assert ofa.channel_groups(unet) is groups  # the graph is built once per model


def test_width_knobs(unet):
    knobs = ofa.width_knobs(unet)
    assert set(knobs) == {"stage1", "stage2"}
    for values in knobs.values():
        assert values == sorted(values) and values[-1] == 64 and all(v % 8 == 0 for v in values)
    # stage 1's first resnet has a learned 32->64 shortcut: width 32 would make diffusers drop it
    assert 32 not in knobs["stage1"] and 32 in knobs["stage2"]


def test_full_widths_reproduce_the_model(unet, orders, inputs):
    ref = _out(unet, inputs)
    for widths in ({}, ofa.full_widths(unet), {"stage0": 32}):
        sliced = ofa.slice_widths(unet, widths, orders)
        assert list(sliced.config.block_out_channels) == [32, 64, 64]
        assert (_out(sliced, inputs) - ref).abs().max().item() <= 1e-6


def test_sliced_model_is_a_stock_diffusers_model(unet, orders, inputs, tmp_path):
    widths = {"stage1": 48, "stage2": 32}
    sliced = ofa.slice_widths(unet, widths, orders)
    assert type(sliced) is UNet2DModel
    sliced.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["block_out_channels"] == [32, 48, 32]
    loaded = UNet2DModel.from_pretrained(tmp_path).eval()
    y = _out(sliced, inputs)
    assert y.shape == (4, 3, 16, 16)
    assert (_out(loaded, inputs) - y).abs().max().item() <= 1e-6
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in unet.parameters())
    attn = loaded.down_blocks[1].attentions[0]
    assert attn.heads == 6 and attn.to_q.out_features == 48  # whole heads removed, head_dim kept


def test_new_shortcut_is_an_exact_selection(unet, orders):
    # 64 == 64 gave down_blocks.2.resnets.0 an identity shortcut; 48 != 32 needs a 1x1 conv in diffusers
    assert unet.down_blocks[2].resnets[0].conv_shortcut is None
    sliced = ofa.slice_widths(unet, {"stage1": 48, "stage2": 32}, orders)
    conv = sliced.down_blocks[2].resnets[0].conv_shortcut
    w = conv.weight[:, :, 0, 0]
    assert w.shape == (32, 48) and set(w.unique().tolist()) == {0.0, 1.0}
    # nested orders: every kept output channel is among the kept inputs, so each row picks exactly one
    assert w.sum(dim=1).tolist() == [1.0] * 32 and w.sum(dim=0).max().item() == 1.0
    assert conv.bias.abs().max().item() == 0.0


def test_index_map_and_new_tensors_rebuild_the_sliced_state(unet, orders):
    # what an exporter does with foreign weights laid out like the supernet: select, then add
    widths = {"stage1": 40, "stage2": 24}
    index = ofa.width_index_map(unet, widths, orders)
    added = ofa.width_new_tensors(unet, widths, orders)
    assert set(added) == {"down_blocks.2.resnets.0.conv_shortcut.weight", "down_blocks.2.resnets.0.conv_shortcut.bias"}
    rebuilt = dict(added)
    for name, t in unet.state_dict().items():
        for dim, idx in index.get(name, {}).items():
            t = t.index_select(dim, idx)
        rebuilt[name] = t
    sliced = ofa.slice_widths(unet, widths, orders).state_dict()
    assert rebuilt.keys() == sliced.keys()
    assert all(torch.equal(rebuilt[k], sliced[k]) for k in sliced)
    assert ofa.width_new_tensors(unet, {"stage1": 40, "stage2": 40}, orders) == {}


def test_single_head_attention_is_cut_channel_by_channel():
    torch.manual_seed(4)
    model = UNet2DModel(**{**TINY, "attention_head_dim": None}).eval()
    attn = [g for g in ofa.channel_groups(model) if g.key.endswith("to_v")]
    assert attn and all(g.unit == 1 for g in attn)
    assert ofa.width_knobs(model)["stage1"] == [8, 16, 24, 40, 48, 56, 64]
    orders = ofa.channel_orders(ofa.channel_importance(model, ofa.channel_groups(model)))
    sliced = ofa.slice_widths(model, {"stage1": 24}, orders)
    assert (
        sliced.down_blocks[1].attentions[0].heads == 1 and sliced.down_blocks[1].attentions[0].to_q.out_features == 24
    )


def test_subnets_are_nested(unet, orders):
    small = ofa.width_index_map(unet, {"stage1": 16, "stage2": 24}, orders)
    large = ofa.width_index_map(unet, {"stage1": 40, "stage2": 48}, orders)
    assert small.keys() == large.keys() and len(small) > 50
    strictly = 0
    for name, dims in small.items():
        for dim, idx in dims.items():
            assert set(idx.tolist()) <= set(large[name][dim].tolist()), (name, dim)
            strictly += len(idx) < len(large[name][dim])
    assert strictly > 50


def test_order_beats_its_reverse(unet, orders, inputs):
    ref = _out(unet, inputs)
    reverse = {k: v[::-1] for k, v in orders.items()}
    for widths in ({"stage1": 48, "stage2": 48}, {"stage1": 64, "stage2": 32}):
        err = (_out(ofa.slice_widths(unet, widths, orders), inputs) - ref).pow(2).mean().item()
        err_rev = (_out(ofa.slice_widths(unet, widths, reverse), inputs) - ref).pow(2).mean().item()
        assert err * 1.5 < err_rev, (widths, err, err_rev)


def test_gradient_importance_gives_another_valid_order(unet, orders):
    groups = ofa.channel_groups(unet)
    calib = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    imp = ofa.channel_importance(unet, groups, calib, n_samples=3, seed=0)
    grad_orders = ofa.channel_orders(imp)
    assert grad_orders.keys() == orders.keys()
    for g in groups:
        assert sorted(grad_orders[g.key]) == list(range(g.size))
        assert torch.isfinite(imp[g.key]).all() and imp[g.key].min() >= 0
        if g.unit > 1:  # a head is ranked as a whole: each run of 8 is one head, in order
            for h in range(0, g.size, g.unit):
                run = grad_orders[g.key][h : h + g.unit]
                assert run == list(range(run[0], run[0] + g.unit))
    assert sum(grad_orders[k] != orders[k] for k in orders) >= len(orders) // 2
    # all params are left without .grad: importance must not disturb a training loop
    assert all(p.grad is None for p in unet.parameters())


@pytest.mark.parametrize(
    "widths, fragment",
    [
        ({"stage1": 50}, "not allowed for stage1"),
        ({"stage1": 32}, "except 32"),
        ({"stage1": 72}, "not allowed for stage1"),
        ({"stage0": 16}, "stage 0 sets the timestep embedding"),
        ({"stage3": 32}, "unknown stage 'stage3'"),
        ({"block1": 32}, "unknown stage 'block1'"),
    ],
)
def test_bad_widths_fail_in_one_line(unet, orders, widths, fragment):
    with pytest.raises(FineDeployError) as e:
        ofa.slice_widths(unet, widths, orders)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_orders_and_models_fail_in_one_line(unet, orders):
    broken = dict(orders)
    key = next(iter(broken))
    broken[key] = [0] * len(orders[key])
    with pytest.raises(FineDeployError, match="not a permutation"):
        ofa.slice_widths(unet, {"stage1": 48}, broken)
    with pytest.raises(FineDeployError, match="not a diffusers UNet2DModel"):
        ofa.width_knobs(nn.Linear(2, 2))
    skip = UNet2DModel(**{**TINY, "down_block_types": ("DownBlock2D", "AttnSkipDownBlock2D", "DownBlock2D")})
    with pytest.raises(FineDeployError, match="AttnSkipDownBlock2D"):
        ofa.channel_groups(skip)


def test_allocation(unet, orders):
    imp = ofa.channel_importance(unet, ofa.channel_groups(unet))
    knobs = ofa.width_knobs(unet)
    assert ofa.allocate_widths(unet, imp, 1.0) == {"stage1": 64, "stage2": 64}
    prev = None
    for size in (0.25, 0.5, 0.75):
        widths = ofa.allocate_widths(unet, imp, size)
        for stage, w in widths.items():
            assert w in knobs[stage] and 0.25 * 64 <= w <= 64
        if prev is not None:
            assert all(widths[s] >= prev[s] for s in widths)
        prev = widths
        ofa.slice_widths(unet, widths, orders)  # every allocation is sliceable
    # importance above the mean earns a stage more than P * |l|
    stages = ofa.stage_importance(unet, imp)
    half = ofa.allocate_widths(unet, imp, 0.5)
    top = max(stages, key=stages.get)
    assert half[top] >= 32
    for bad in (0.0, 1.5):
        with pytest.raises(FineDeployError, match="outside"):
            ofa.allocate_widths(unet, imp, bad)


def test_stage_tied_to_stage0_and_shortcut_clash():
    # boc[0] == boc[1]: stage 1's stream shares stage 0's index space; stage 2 has a learned shortcut
    torch.manual_seed(3)
    model = UNet2DModel(**{**TINY, "block_out_channels": (32, 32, 64)}).eval()
    groups = ofa.channel_groups(model)
    orders = ofa.channel_orders(ofa.channel_importance(model, groups))
    assert any({m.stage for m in g.members} == {0, 1} for g in groups)
    x = (torch.randn(2, 3, 16, 16), torch.tensor([3, 700]))
    assert (_out(ofa.slice_widths(model, {}, orders), x) - _out(model, x)).abs().max().item() <= 1e-6
    sliced = ofa.slice_widths(model, {"stage1": 16}, orders)
    w = sliced.down_blocks[1].resnets[0].conv_shortcut.weight[:, :, 0, 0]
    assert w.shape == (16, 32) and w.sum(dim=1).tolist() == [1.0] * 16
    assert torch.isfinite(_out(sliced, x)).all()
    with pytest.raises(FineDeployError, match="drops the learned shortcut"):
        ofa.slice_widths(model, {"stage2": 32}, orders)
    widths = ofa.allocate_widths(model, ofa.channel_importance(model, groups), 0.5)
    assert widths["stage1"] != widths["stage2"] or widths["stage2"] == 64


def test_stage0_sinusoid_is_not_a_slice():
    """Why stage 0 stays whole: a narrower timestep sinusoid is not a column subset of the wider one."""
    t = torch.arange(0, 1000, 7)

    def matched(freq_shift: int) -> float:
        big = get_timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=freq_shift)
        small = get_timestep_embedding(t, 16, flip_sin_to_cos=True, downscale_freq_shift=freq_shift)
        dist = torch.cdist(small.T, big.T)  # each small column against every big column
        return (dist.min(dim=1).values < 0.02).float().mean().item()  # float32 t*freq rounding ~1e-2

    assert matched(1) <= 0.25  # google/ddpm-* (freq_shift=1): only the first and last frequency match
    assert matched(0) == 1.0  # freq_shift=0 with a halved width happens to be a strided subset


def test_dit_has_no_sliceable_width():
    torch.manual_seed(0)
    cfg = dict(
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=8,
    )
    dit = DiTTransformer2DModel(**cfg).eval()
    # why the DiT adapter offers no width knob: a narrower DiT is not a slice of a wider one
    assert "pos_embed.pos_embed" not in dit.state_dict()
    narrow = DiTTransformer2DModel(**{**cfg, "num_attention_heads": 2})
    wide_pe, narrow_pe = dit.pos_embed.pos_embed[0], narrow.pos_embed.pos_embed[0]
    hit = torch.cdist(narrow_pe.T, wide_pe.T).min(dim=1).values < 1e-5
    assert hit.float().mean().item() < 1.0
    assert "ff_inner_dim" not in dit.config

