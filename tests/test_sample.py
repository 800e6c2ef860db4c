"""`fine-deploy sample`: the same seeds through ONNX Runtime and PyTorch, schedules, grids, compare, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image

from fine_deploy.errors import FineDeployError
from fine_deploy.export import export, uniform_kernels
from fine_deploy.planner.schema import Plan
from fine_deploy.sample import make_scheduler, read_scheduler, sample, training_schedule
from fine_deploy.supernet.core import SubnetConfig, Supernet, load_supernet
from fine_deploy.supernet.schedule import DEFAULTS_SOURCE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def half_plan(sn_dir, path, kernels: str | None = None, batch: int = 1) -> Plan:
    sn = load_supernet(sn_dir)
    cfg = {"ranks": {t.name: max(1, t.max_rank // 2) for t in sn.types}}
    plan = Plan(supernet={"path": str(sn_dir), "sha256": sn.content_hash}, subnet=cfg,
                kernels=uniform_kernels(sn, cfg, kernels) if kernels else {}, inputs={"batch": batch})
    plan.save(path)
    return plan


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory):
    """The embedded default at half rank (low-rank kernels), exported to ONNX with a fixed batch of 3."""
    d = tmp_path_factory.mktemp("default")
    half_plan("default", d / "plan.json", "low_rank", batch=3)
    export(d / "plan.json", "onnx", d / "onnx")
    return d


def test_onnx_runtime_and_pytorch_sample_the_same_images(default_onnx):
    """Shape-level use of the default: whatever its weights, both paths must denoise identically."""
    kw = dict(steps=4, seed=7, n=5)  # 5 images through a batch-3 model: chunks of 3, the last one padded
    ort = sample(default_onnx / "onnx", **kw)
    pt = sample(default_onnx / "plan.json", **kw)
    assert ort.record["model"]["runtime"] == "onnxruntime-cpu" and pt.record["model"]["runtime"] == "torch"
    assert ort.images.shape == pt.images.shape == (5, 1, 16, 16)
    assert float(np.abs(ort.images - pt.images).max()) <= 1e-3
    assert ort.record["labels"] == [0, 1, 2, 3, 4]  # class-conditional: labels cycle over the classes
    # the ancestral sampler draws its step noise per image from the image's own seed: still identical
    kw["sampler"] = "ddpm"
    assert float(np.abs(sample(default_onnx / "onnx", **kw).images - sample(default_onnx / "plan.json", **kw).images)
                 .max()) <= 1e-3


def test_image_i_depends_only_on_seed_plus_i(dit_supernet):
    a = sample(dit_supernet, steps=3, seed=10, n=3).images
    b = sample(dit_supernet, steps=3, seed=11, n=2, labels=[1, 2]).images
    assert np.abs(a[1:] - b).max() < 1e-5
    assert np.abs(a[0] - a[1]).max() > 0.1  # different seeds do give different images


def test_export_carries_the_training_schedule(dit_supernet, tmp_path):
    sn = load_supernet(dit_supernet)
    trained = Supernet(copy.deepcopy(sn.spec), sn.tensors)
    trained.spec.provenance = {"recipe": {"name": "r", "scheduler": {"num_train_timesteps": 500,
                                                                      "beta_schedule": "squaredcos_cap_v2"},
                                          "metric": {"guidance_scale": 2.5}}}
    trained.save(tmp_path / "sn")
    s = training_schedule(trained)
    assert s.config["beta_schedule"] == "squaredcos_cap_v2" and s.config["num_train_timesteps"] == 500
    assert "recipe r" in s.source
    half_plan(tmp_path / "sn", tmp_path / "plan.json")
    m = export(tmp_path / "plan.json", "onnx", tmp_path / "o")
    stored = read_scheduler(tmp_path / "o")
    assert stored["beta_schedule"] == "squaredcos_cap_v2" and stored["num_train_timesteps"] == 500
    assert m.sampling["guidance_scale"] == 2.5 and m.sampling["null_class"] == 10
    assert "scheduler/scheduler_config.json" in m.files
    raw = json.loads((tmp_path / "o" / "scheduler" / "scheduler_config.json").read_text())
    assert raw["_class_name"] == "DDPMScheduler"
    r = sample(tmp_path / "o", steps=2, n=2)
    assert r.record["guidance_scale"] == 2.5 and r.record["scheduler"]["config"]["num_train_timesteps"] == 500
    # a converted supernet records no schedule: diffusers' defaults, and the record says so
    assert training_schedule(sn).source == DEFAULTS_SOURCE and training_schedule(sn).config["beta_schedule"] == "linear"


def test_compare_writes_grid_and_record(unet_supernet, tmp_path):
    half_plan(unet_supernet, tmp_path / "plan.json")
    out = tmp_path / "g" / "grid.png"
    r = sample(tmp_path / "plan.json", steps=3, seed=0, n=4, output=out, compare=True)
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["schema"] == 1 and rec["format"] == "fine-deploy-sample" and rec["n"] == 4
    assert rec["labels"] is None and rec["image_shape"] == [3, 16, 16]
    c = rec["compare"]
    assert len(c["per_image"]) == 4 and c["mean_abs_diff"] > 0  # half rank is not the full model
    assert np.isclose(c["mean_abs_diff"], float(np.abs(r.images - r.full_images).mean()), atol=1e-5)
    assert c["frechet_distance"]["value"] is None and "1-channel" in c["frechet_distance"]["why"]
    img = Image.open(out)
    # three panels of a 2x2 grid of 64-px tiles (16-px images upscaled 4x) side by side
    assert img.width >= 3 * 2 * 64 and img.height >= 2 * 64
    assert sorted(p.name for p in tmp_path.joinpath("g").iterdir()) == ["grid.json", "grid.png"]  # no temp files


def test_compare_reports_frechet_for_digit_shaped_images(default_onnx):
    r = sample(default_onnx / "onnx", steps=2, n=6, compare=True)
    fd = r.record["compare"]["frechet_distance"]
    assert fd["value"] is not None and fd["value"] >= 0 and fd["images"] == 6
    same = sample("default", steps=2, n=6, compare=True)  # the full model against itself
    assert same.record["compare"]["mean_abs_diff"] == 0.0 and same.record["compare"]["frechet_distance"]["value"] < 1e-6


def test_guidance_changes_conditional_images_only(dit_supernet):
    a = sample(dit_supernet, steps=2, n=2, guidance=1.0).images
    b = sample(dit_supernet, steps=2, n=2, guidance=3.0).images
    assert np.abs(a - b).max() > 1e-4


def test_bad_input_one_line_and_nothing_written(dit_supernet, unet_supernet, tmp_path):
    out = tmp_path / "g.png"
    cases = [
        (dict(artifact=tmp_path / "missing"), "does not exist"),
        (dict(artifact=dit_supernet, steps=0), "at least 1 step"),
        (dict(artifact=dit_supernet, sampler="euler"), "--sampler 'euler' is unknown"),
        (dict(artifact=dit_supernet, labels=[10]), "outside this model's classes 0..9"),
        (dict(artifact=unet_supernet, labels=[1]), "not class-conditional"),
        (dict(artifact=unet_supernet, guidance=2.0), "needs a class- or text-conditioned model"),
    ]
    for kw, msg in cases:
        art = kw.pop("artifact")
        with pytest.raises(FineDeployError, match=msg):
            sample(art, output=out, **kw)
    with pytest.raises(FineDeployError, match="written as PNG"):
        sample(dit_supernet, output=tmp_path / "g.jpg")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(FineDeployError, match="bare model files carry no schedule"):
        sample(tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_old_export_without_schedule_is_refused(default_onnx, tmp_path):
    import shutil

    shutil.copytree(default_onnx / "onnx", tmp_path / "old")
    shutil.rmtree(tmp_path / "old" / "scheduler")
    with pytest.raises(FineDeployError, match="no scheduler/scheduler_config.json"):
        sample(tmp_path / "old", steps=1, n=1)


def test_make_scheduler_reads_ddpm_config_as_ddim():
    from fine_deploy.supernet.schedule import _full

    s = make_scheduler(_full({"beta_schedule": "squaredcos_cap_v2"}), "ddim")
    assert type(s).__name__ == "DDIMScheduler" and s.config.beta_schedule == "squaredcos_cap_v2"


def test_cli_sample_and_error(dit_supernet, tmp_path):
    from typer.testing import CliRunner

    from fine_deploy.cli import app

    out = tmp_path / "grid.png"
    r = CliRunner().invoke(app, ["sample", str(dit_supernet), "--steps", "2", "--seed", "1", "-n", "3",
                                 "--labels", "4,5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["labels"] == [4, 5, 4]
    r = CliRunner().invoke(app, ["sample", str(dit_supernet), "--labels", "a,b", "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "comma-separated class ids" in r.output
    assert not (tmp_path / "x.png").exists()


def test_subnet_config_default_is_full(dit_supernet):
    # the PyTorch path of a supernet samples its full configuration
    r = sample(dit_supernet, steps=1, n=1)
    sn = load_supernet(dit_supernet)
    assert r.record["subnet"] == SubnetConfig({t.name: t.max_rank for t in sn.types}, {}, None).to_json()
