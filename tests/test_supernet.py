"""Supernet core: types, factorised layers, convert, materialise, depth."""

from __future__ import annotations

import pytest
import torch
from conftest import dit_inputs, make_dit, make_unet, run, unet_inputs

from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.core import SubnetConfig, Supernet
from fine_deploy.supernet.types import dense_parameters, find_types


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_dit_types_cover_the_five_roles_and_fuse_qkv():
    model = make_dit()
    types = {t.name: t for t in find_types(model)}
    assert set(types) == {"qkv", "attn_out", "fc1", "fc2", "adaln"}
    d = 16
    assert (types["qkv"].m1, types["qkv"].m2) == (3 * d, d)
    assert [len(m.parts) for m in types["qkv"].matrices] == [3, 3, 3]
    assert (types["adaln"].m1, types["fc2"].m2) == (6 * d, 4 * d)
    assert all(t.layers == 3 for t in types.values())
    dense = dense_parameters(model, list(types.values()))
    assert "pos_embed.proj.weight" in dense and "proj_out_2.weight" in dense
    assert "transformer_blocks.0.attn1.to_q.bias" in dense
    assert not any(n.endswith("to_q.weight") for n in dense)


def test_unet_types_group_equal_shapes_by_stage_and_role():
    model = make_unet()
    types = find_types(model)
    names = {t.name for t in types}
    assert {"down0.conv1", "down1.qkv", "mid.conv1", "up0.attn_out"} <= names
    # up0 resnets take concatenated skips of different widths: one role, two shapes, two types
    assert {n for n in names if n.startswith("up0.conv1")} == {"up0.conv1_32x576", "up0.conv1_32x432"}
    mid = next(t for t in types if t.name == "mid.conv1")
    assert mid.kind == "conv" and mid.layers == 2 and mid.kernel_size == (3, 3) and mid.m2 == 32 * 9
    dense = dense_parameters(model, types)
    for name in ("conv_in.weight", "conv_out.weight", "time_embedding.linear_1.weight", "conv_norm_out.weight"):
        assert name in dense


def test_unsupported_backbone_is_refused():
    with pytest.raises(FineDeployError, match="not supported"):
        find_types(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("which", ["dit", "unet"])
def test_exact_rank_reproduces_dense_model(which, request):
    sn = Supernet.load(request.getfixturevalue(f"{which}_supernet"))
    model, inputs = (make_dit(), dit_inputs()) if which == "dit" else (make_unet(), unet_inputs())
    ref = run(model, inputs)
    out = run(sn.subnet(), inputs)
    assert rel_err(out, ref) <= 1e-5
    for t in sn.types:
        assert t.max_rank == t.layers * min(t.m1, t.m2)
        assert t.reconstruction_error[str(t.max_rank)] <= 1e-5


@pytest.mark.parametrize("which", ["dit", "unet"])
def test_output_error_falls_monotonically_with_rank(which, request):
    sn = Supernet.load(request.getfixturevalue(f"{which}_supernet"))
    model, inputs = (make_dit(), dit_inputs()) if which == "dit" else (make_unet(), unet_inputs())
    ref = run(model, inputs)
    errs = []
    for frac in (0.125, 0.25, 0.5, 0.75, 1.0):
        ranks = {t.name: max(1, round(t.max_rank * frac)) for t in sn.types}
        errs.append(rel_err(run(sn.subnet(SubnetConfig(ranks=ranks)), inputs), ref))
    assert all(a >= b - 1e-7 for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[0] > 10 * errs[-1]
    for t in sn.types:
        e = [t.reconstruction_error[str(r)] for r in t.rank_options]
        assert all(a >= b - 1e-7 for a, b in zip(e, e[1:], strict=False)), (t.name, e)


def test_trainable_supernet_matches_folded_subnet_and_rank_knob(dit_supernet):
    from fine_deploy.train.engine import TrainableSupernet

    sn = Supernet.load(dit_supernet)
    tsn = TrainableSupernet(sn)
    x = dit_inputs()
    with torch.no_grad():
        got = tsn.predict(x["hidden_states"], x["timestep"], x["class_labels"])
        assert rel_err(got, run(sn.subnet(), x)) <= 1e-5
        ranks = {t.name: t.rank_options[1] for t in sn.types}
        got = tsn.predict(x["hidden_states"], x["timestep"], x["class_labels"], SubnetConfig(ranks=ranks, depth=2))
        assert rel_err(got, run(sn.subnet(SubnetConfig(ranks=ranks, depth=2)), x)) <= 1e-5


def test_sigma_only_mode_trains_only_sigma_and_bases_are_shared(dit_supernet):
    from fine_deploy.train.engine import TrainableSupernet, sigma_only

    tsn = TrainableSupernet(Supernet.load(dit_supernet))
    params = sigma_only(tsn)
    assert {id(p) for p in params} == {id(p) for p in tsn.parameters() if p.requires_grad}
    x = dit_inputs()
    tsn.predict(x["hidden_states"], x["timestep"], x["class_labels"]).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tsn.sigmas.values())
    U, _ = tsn.basis("qkv")  # one qkv basis for all layers, frozen
    assert U.grad is None and not U.requires_grad


def test_trainable_supernet_round_trips(dit_supernet):
    from fine_deploy.train.engine import TrainableSupernet

    tsn = TrainableSupernet(Supernet.load(dit_supernet))
    with torch.no_grad():
        tsn.sigma("transformer_blocks.1.fc1").mul_(0.5)
    back = tsn.to_supernet()
    assert torch.equal(back.tensors["sigma.transformer_blocks.1.fc1"], tsn.sigma("transformer_blocks.1.fc1").detach())


def test_depth_knob_builds_a_shallower_stock_dit(dit_supernet, tmp_path):
    from diffusers import DiTTransformer2DModel

    sn = Supernet.load(dit_supernet)
    assert sn.spec.depth["options"] == [2, 3]
    full = sn.subnet(SubnetConfig(depth=3))
    assert rel_err(run(full, dit_inputs()), run(sn.subnet(), dit_inputs())) == 0.0
    sub = sn.subnet(SubnetConfig(depth=2))
    assert sub.config.num_layers == 2 and len(sub.transformer_blocks) == 2
    # linear interpolation along depth: the end blocks keep the supernet's end σ exactly
    U, V = sn.tensors["basis.fc1.U"], sn.tensors["basis.fc1.V"]
    w_last = (U * sn.tensors["sigma.transformer_blocks.2.fc1"]) @ V.T
    assert torch.allclose(sub.transformer_blocks[1].ff.net[0].proj.weight, w_last, atol=1e-5)
    sub.save_pretrained(tmp_path / "d2")
    again = DiTTransformer2DModel.from_pretrained(tmp_path / "d2")
    assert again.config.num_layers == 2
    assert (run(again, dit_inputs()) - run(sub, dit_inputs())).abs().max() <= 1e-6


def test_bad_subnet_configs_are_refused(dit_supernet):
    sn = Supernet.load(dit_supernet)
    with pytest.raises(FineDeployError, match="unknown type 'nope'"):
        sn.subnet({"ranks": {"nope": 2}})
    with pytest.raises(FineDeployError, match="outside 1.."):
        sn.subnet({"ranks": {"fc1": 10_000}})
    with pytest.raises(FineDeployError, match="depth 9 not among"):
        sn.subnet({"depth": 9})
    with pytest.raises(FineDeployError, match="unknown knob"):
        sn.subnet({"rank": {}})
    with pytest.raises(FineDeployError, match="unknown width knob"):
        sn.subnet({"widths": {"stage1": 8}})


def test_width_sliced_subnet_under_no_grad_and_its_layer_shapes(unet_supernet):
    """Regressions: slicing inside torch.no_grad() failed (torch-pruning traces with autograd), and
    layer_shapes reported the spec's full-width rows for a width-sliced subnet."""
    from fine_deploy.cost.trace import layer_shapes

    sn = Supernet.load(unet_supernet)
    knob, opts = next(iter(sn.spec.widths["knobs"].items()))
    narrow = min(opts)
    with torch.no_grad():
        sub = sn.subnet({"widths": {knob: narrow}})
    assert list(sub.config.block_out_channels)[1] == narrow
    shapes = dict(layer_shapes(sn, {"widths": {knob: narrow}}))
    conv1 = shapes["down_blocks.1.resnets.0.conv1"]
    assert conv1.m1 == narrow == sub.down_blocks[1].resnets[0].conv1.out_channels
    qkv = shapes["down_blocks.1.attentions.0.qkv"]
    assert qkv.m1 == 3 * narrow and qkv.m2 == narrow
