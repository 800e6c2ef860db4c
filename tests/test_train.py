"""Training: recipes, data, the differentiable subnet, FINE training, σ-only retraining, metrics, default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import dit_inputs, run

from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.core import SubnetConfig, Supernet, basis_names, load_supernet
from fine_deploy.train.data import digits, image_folder, split
from fine_deploy.train.engine import TrainableSupernet
from fine_deploy.train.metrics import frechet_distance, load_classifier
from fine_deploy.train.pretrain import checkpoint_dir, size_weights, train
from fine_deploy.train.recipe import list_recipes, load_recipe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny-dit trained for 30 steps (FINE 22 + nested 8): the supernet every test below reuses."""
    out = tmp_path_factory.mktemp("train") / "tiny"
    sn = train("tiny-dit", out, steps=30)
    return out, sn


def test_shipped_recipes_load_and_bad_ones_are_refused(tmp_path):
    assert {"dit-digits", "unet-digits", "tiny-dit"} <= set(list_recipes())
    r = load_recipe("dit-digits")
    assert r.backbone == "DiTTransformer2DModel" and r.total_steps == sum(s.steps for s in r.stages)
    assert r.with_steps(100).total_steps == 100
    with pytest.raises(FineDeployError, match="no recipe 'nope'.*dit-digits"):
        load_recipe("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbackbone: DiTTransformer2DModel\nconfig: {}\nstages: [{mode: magic, steps: 3}]\n")
    with pytest.raises(FineDeployError, match="stage mode 'magic'"):
        load_recipe(bad)
    bad.write_text("name: x\nbackbone: DiTTransformer2DModel\nconfig: {}\nstages: [{mode: fine, steps: 3}]\n"
                   "metric: {samples: 10, guidance_sweep: [1.0, -2]}\n")
    with pytest.raises(FineDeployError, match="guidance_sweep .* must be a list of guidance scales"):
        load_recipe(bad)


def test_digits_and_image_folder(tmp_path):
    d = digits(16)
    assert d.images.shape == (1797, 1, 16, 16) and d.labels.unique().numel() == 10
    assert d.images.min() >= -1 and d.images.max() <= 1
    tr, held = split(d, 0.15, 0)
    assert len(tr) + len(held) == 1797 and abs(len(held) - 270) <= 1
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((5, 7), 255 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    f = image_folder(tmp_path, 8)
    assert f.images.shape == (4, 1, 8, 8) and f.labels.tolist() == [0, 0, 1, 1] and f.num_classes == 2
    assert f.images[0].max() == -1 and f.images[1].min() == 1
    with pytest.raises(FineDeployError, match="no such image folder"):
        image_folder(tmp_path / "missing", 8)


def test_trainable_supernet_runs_the_same_subnets_as_subnet(dit_supernet):
    sn = Supernet.load(dit_supernet)
    tsn = TrainableSupernet(sn)
    inp = dit_inputs()
    r = sn.types[0].rank_options[1]
    for cfg in (SubnetConfig(), SubnetConfig(ranks={sn.types[0].name: r}), SubnetConfig(depth=2)):
        with torch.no_grad():
            got = tsn.predict(inp["hidden_states"], inp["timestep"], inp["class_labels"], cfg)
        assert (got - run(sn.subnet(cfg), inp)).abs().max() < 1e-4, cfg


def test_trainable_supernet_slices_widths_like_subnet(unet_supernet):
    from conftest import unet_inputs

    sn = Supernet.load(unet_supernet)
    tsn = TrainableSupernet(sn)
    knob, values = next(iter(sn.spec.widths["knobs"].items()))
    cfg = SubnetConfig(widths={knob: values[0]})
    inp = unet_inputs()
    with torch.no_grad():
        got = tsn.predict(inp["sample"], inp["timestep"], None, cfg)
    assert (got - run(sn.subnet(cfg), inp)).abs().max() < 1e-4


def test_size_weights_favour_small_sizes():
    w = size_weights(7, 3.0)
    assert torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    assert torch.isclose(w[0] / w[-1], torch.tensor(3.0, dtype=w.dtype)) and bool((w[:-1] > w[1:]).all())


def test_training_lowers_the_loss_and_fills_the_supernet(tiny):
    out, sn = tiny
    p = sn.spec.provenance
    curve = [v for _, v in p["loss_curve"]]
    assert p["trained"] and p["steps"] == 30
    assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:5]), curve
    again = Supernet.load(out)
    assert again.content_hash == sn.content_hash
    s = again.spec.sensitivity
    assert s["metric"] == "heldout_denoising_loss" and s["baseline"] == pytest.approx(p["heldout_loss"])
    assert set(s["ranks"]) == {t.name for t in again.types}
    for t in again.types:
        assert set(s["ranks"][t.name]) == {str(r) for r in t.rank_options}
        errs = [t.reconstruction_error[str(r)] for r in t.rank_options]
        assert errs[-1] < 1e-3 and errs[0] > errs[-1]
    assert set(s["depth"]) == {str(d) for d in again.spec.depth["options"]}
    assert s["depth"]["1"] > 0  # dropping half the blocks must hurt a trained model


def test_resume_continues_from_the_checkpoint(tiny, tmp_path):
    out, _ = tiny
    meta = json.loads((checkpoint_dir(out) / "trainer.json").read_text())
    assert meta["step"] == 30 and len(meta["losses"]) == 30
    # copy the checkpoint, resume to 34 steps: the first 30 losses are kept, 4 more are added
    import shutil

    shutil.copytree(checkpoint_dir(out), checkpoint_dir(tmp_path / "r"))
    sn = train("tiny-dit", tmp_path / "r", steps=34, resume=True, evaluate=False)
    meta2 = json.loads((checkpoint_dir(tmp_path / "r") / "trainer.json").read_text())
    assert meta2["step"] == 34 and meta2["losses"][:30] == meta["losses"]
    assert sn.spec.provenance["steps"] == 34
    with pytest.raises(FineDeployError, match="no checkpoint"):
        train("tiny-dit", tmp_path / "fresh", resume=True)


def test_ema_ships_the_average_and_resumes_it(tmp_path, monkeypatch):
    """With `ema` the trained supernet is the parameters' moving average (not the last step's weights), the
    checkpoint keeps the average, and a resumed run continues it: resume(6→8) ends where a straight 8-step run does."""
    from fine_deploy.train.checkpoint import EMA_FILE
    from fine_deploy.train.recipe import Stage

    r = load_recipe("tiny-dit")
    r.stages, r.checkpoint_every = [Stage("fine", 8)], 6
    plain = train(r, tmp_path / "plain", evaluate=False)
    r.ema = 0.9
    straight = train(r, tmp_path / "ema", evaluate=False)
    assert (checkpoint_dir(tmp_path / "ema") / EMA_FILE).is_file()
    assert json.loads((checkpoint_dir(tmp_path / "ema") / "trainer.json").read_text())["ema_updates"] == 8
    diff = max(float((straight.tensors[k] - plain.tensors[k]).abs().max()) for k in plain.tensors)
    assert diff > 1e-4  # the average differs from the last weights
    # the same run interrupted after its step-6 checkpoint, then resumed: it ends where the straight run did
    import fine_deploy.train.loop as loop

    def stop_at_7(s, step, _lr_at=loop.lr_at):
        if step == 7:
            raise KeyboardInterrupt
        return _lr_at(s, step)

    monkeypatch.setattr(loop, "lr_at", stop_at_7)
    with pytest.raises(KeyboardInterrupt):
        train(r, tmp_path / "cut", evaluate=False)
    monkeypatch.undo()
    assert json.loads((checkpoint_dir(tmp_path / "cut") / "trainer.json").read_text())["ema_updates"] == 6
    resumed = train(r, tmp_path / "cut", resume=True, evaluate=False)
    for k in straight.tensors:
        assert torch.allclose(resumed.tensors[k], straight.tensors[k], atol=1e-5), k
    # across a stage boundary (the columns are re-sorted there) the average restarts from the reordered weights
    r.stages = [Stage("fine", 4), Stage("ofa", 4)]
    two = train(r, tmp_path / "two", evaluate=False)
    assert json.loads((checkpoint_dir(tmp_path / "two") / "trainer.json").read_text())["ema_updates"] == 8
    assert all(torch.isfinite(v).all() for v in two.tensors.values())
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbackbone: DiTTransformer2DModel\nconfig: {}\nema: 1.5\nstages: [{mode: fine, steps: 1}]\n")
    with pytest.raises(FineDeployError, match="ema 1.5 must be 0"):
        load_recipe(bad)


def _plan_for(sn_path, sn, tmp_path, **subnet):
    from fine_deploy.planner.schema import Plan

    plan = Plan(supernet={"path": str(sn_path), "sha256": sn.content_hash}, subnet=subnet)
    return plan.save(tmp_path / "plan.json")


def test_retrain_changes_only_sigma(tiny, tmp_path):
    from fine_deploy.planner.schema import Plan, supernet_for_plan
    from fine_deploy.train.retrain import retrain

    out, sn = tiny
    t0 = sn.types[0]
    plan = _plan_for(out, sn, tmp_path, ranks={t0.name: t0.rank_options[3]}, widths={}, depth=1)
    sub_dir = retrain(plan, tmp_path / "subnet", steps=6, fraction=0.2, lr=2e-2)
    sub = Supernet.load(sub_dir)
    for t in sn.types:
        for name in basis_names(t.name):
            assert torch.equal(sub.tensors[name], sn.tensors[name]), name  # bit-identical learngenes
    # depth 1 keeps block 0; its dense parameters are block 0's, unchanged
    for k, v in sub.tensors.items():
        if k.startswith("dense."):
            assert torch.equal(v, sn.tensors[k]), k
    start = sn.sigma("transformer_blocks.0.qkv", 1)
    assert not torch.equal(sub.tensors["sigma.transformer_blocks.0.qkv"], start)
    assert sub.spec.depth["full"] == 1 and sub.spec.config["num_layers"] == 1
    prov = sub.spec.provenance
    assert prov["sigma_only"] and prov["steps"] == 6 and prov["parent"]["sha256"] == sn.content_hash
    from fine_deploy.supernet.schedule import default_guidance

    assert default_guidance(sub) == default_guidance(sn) == 2.0  # `sample` guides a subnet as it guides its parent
    inner = Plan.load(sub_dir / "plan.json")
    assert supernet_for_plan(inner).content_hash == sub.content_hash
    model = sub.subnet(SubnetConfig.from_json(inner.subnet))
    assert len(model.transformer_blocks) == 1


def test_sample_compare_of_a_retrained_subnet_uses_the_parent_as_full(tiny, tmp_path):
    """Regression: --compare on a retrained SUBNET compared it with itself (diff 0) instead of its parent."""
    from fine_deploy.sample import sample
    from fine_deploy.train.retrain import retrain

    out, sn = tiny
    plan = _plan_for(out, sn, tmp_path, ranks={}, widths={}, depth=1)
    sub_dir = retrain(plan, tmp_path / "subnet", steps=2, fraction=0.2)
    res = sample(sub_dir / "plan.json", steps=2, n=2, compare=True)
    assert res.record["compare"]["full"]["supernet"]["sha256"] == sn.content_hash
    assert float(np.abs(res.images - res.full_images).mean()) > 1e-4


def test_retrain_refuses_a_plan_from_another_supernet(tiny, dit_supernet, tmp_path):
    from fine_deploy.train.retrain import retrain

    out, sn = tiny
    other = Supernet.load(dit_supernet)
    plan = _plan_for(out, other, tmp_path)
    with pytest.raises(FineDeployError, match="not the one this plan was made from"):
        retrain(plan, tmp_path / "sub", steps=2)
    assert not (tmp_path / "sub").exists()


def test_frechet_distance_and_the_shipped_classifier():
    g = np.random.default_rng(0)
    a = g.normal(size=(2000, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(16.0, rel=1e-6)  # ‖μ shift‖² = 4 · 2²
    net = load_classifier()
    _, held = split(digits(16), 0.15, 0)
    with torch.no_grad():
        acc = (net(held.images).argmax(1) == held.labels).float().mean()
    assert acc > 0.9


def test_default_supernet_is_trained_and_samples():
    from fine_deploy.sample.loop import sample_model

    sn = load_supernet(None)
    assert sn.spec.provenance.get("trained") is True
    assert sn.spec.sensitivity["ranks"] and sn.spec.sensitivity["depth"]
    model = sn.subnet(SubnetConfig(depth=sn.spec.depth["options"][0]))
    imgs = sample_model(model, sn.spec.provenance["recipe"]["scheduler"], 4, steps=4, labels=torch.arange(4))
    assert imgs.shape == (4, 1, 16, 16) and torch.isfinite(imgs).all() and imgs.abs().max() <= 1


def test_cli_train_bad_recipe_is_one_line_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from fine_deploy.cli import app

    res = CliRunner().invoke(app, ["train", "--recipe", "nope", "-o", str(tmp_path / "sn")])
    assert res.exit_code != 0
    assert "no recipe 'nope'" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "sn").exists()


def test_ofa_stage_orders_channels_and_trains_nested_widths(tmp_path):
    recipe = tmp_path / "tiny-unet.yaml"
    recipe.write_text(
        "name: tiny-unet\nbackbone: UNet2DModel\n"
        "config: {sample_size: 8, in_channels: 1, out_channels: 1, block_out_channels: [16, 32], layers_per_block: 1,"
        " norm_num_groups: 8, down_block_types: [DownBlock2D, AttnDownBlock2D],"
        " up_block_types: [AttnUpBlock2D, UpBlock2D], attention_head_dim: 8}\n"
        "max_rank: 16\nbatch_size: 16\nlr: 0.003\nwarmup_steps: 1\n"
        "stages: [{mode: fine, steps: 2}, {mode: ofa, steps: 4}]\n"
        "ofa: {sizes: [0.25, 0.5, 1.0], m: 3.0, p0: 0.25, importance_samples: 2, knobs: [widths, ranks]}\n"
        "heldout_draws: 1\nmetric: {samples: 0}\n"
    )
    sn = train(recipe, tmp_path / "sn")
    w = sn.spec.widths
    assert w["criterion"] == "gradient" and set(w["allocations"]) == {"0.25", "0.50", "1.00"}
    assert w["allocations"]["0.25"]["stage1"] < w["allocations"]["1.00"]["stage1"] == 32
    small = sn.subnet(SubnetConfig(widths=w["allocations"]["0.25"]))
    assert small.config.block_out_channels[1] == w["allocations"]["0.25"]["stage1"]
    sens = sn.spec.sensitivity["widths"]["stage1"]
    assert sens["32"] == 0.0 and len(sens) == len(w["knobs"]["stage1"])


def test_plan_of_a_trained_supernet_states_quality_in_the_metrics_unit(tiny, dit_supernet, tmp_path):
    """The plan's quality figure reads as the held-out loss it estimates (full model → subnet, +%), and a plan of an
    untrained (converted) supernet says its figure is a proxy."""
    from fine_deploy.planner.explain import quality_line
    from fine_deploy.planner.plan import plan

    out, sn = tiny
    base = sn.spec.sensitivity["baseline"]
    p = plan("jetson-orin", "4GB", supernet=out, max_loss=0.3 * base, output=tmp_path / "p.json", show=False)
    q, loss = p.predicted["quality"], p.predicted["quality_loss"]
    est = q["estimate"]
    assert 0 < loss <= 0.3 * base and est["metric"] == "heldout_denoising_loss"
    assert est["full_model"] == pytest.approx(base) and est["subnet"] == pytest.approx(base + loss)
    assert est["relative_increase"] == pytest.approx(loss / base)
    line = quality_line(loss, q)
    assert f"+{100 * loss / base:.0f}%" in line and "held-out denoising loss" in line and "estimated" in line
    proxy = plan("jetson-orin", "4GB", supernet=dit_supernet, show=False).predicted["quality"]
    assert proxy["estimate"] is None and "PROXY" in quality_line(0.01, proxy)
