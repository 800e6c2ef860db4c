"""Exporters: kernel forms agree, ONNX parity per form, diffusers round trip, bad input, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import dit_inputs, run, unet_inputs
from onnx import numpy_helper

from fine_deploy.errors import FineDeployError
from fine_deploy.export import export, fold_subnet, uniform_kernels, verify_files
from fine_deploy.export import parity as par
from fine_deploy.export.manifest import MANIFEST
from fine_deploy.planner.schema import Plan
from fine_deploy.supernet.core import SubnetConfig, load_supernet


def make_plan(sn_dir, subnet: dict, kernels: dict, batch: int = 1) -> Plan:
    sn = load_supernet(sn_dir)
    return Plan(supernet={"path": str(sn_dir), "sha256": sn.content_hash}, subnet=subnet, kernels=kernels,
                inputs={"batch": batch})


def half_ranks(sn) -> dict:
    return {t.name: max(1, t.max_rank // 2) for t in sn.types}


def mixed_kernels(sn, config) -> dict:
    """Every form in use: layers cycle through dense, low-rank and shared-basis."""
    forms = ("dense", "low_rank", "shared_basis")
    names = list(uniform_kernels(sn, config, "dense"))
    return {n: forms[i % 3] for i, n in enumerate(names)}


# --- folding in torch -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["low_rank", "shared_basis"])
def test_forms_match_dense_dit_at_shallower_depth(dit_supernet, form):
    sn = load_supernet(dit_supernet)
    cfg = SubnetConfig(half_ranks(sn), {}, 2)
    ref = run(sn.subnet(cfg), dit_inputs())
    folded = fold_subnet(sn, cfg, uniform_kernels(sn, cfg, form))
    out = run(folded.model, dit_inputs())
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    assert len(folded.forms) == 2 * 5 and set(folded.forms.values()) == {form}
    # fused qkv: q, k and v take their own rows of U
    attn = folded.model.transformer_blocks[0].attn1
    assert attn.to_q.out_features == attn.to_k.out_features == 16


def test_forms_match_dense_unet_with_sliced_widths(unet_supernet):
    sn = load_supernet(unet_supernet)
    knobs = sn.spec.widths["knobs"]
    cfg = SubnetConfig(half_ranks(sn), {k: sorted(v)[len(v) // 2] for k, v in knobs.items()})
    ref = run(sn.subnet(cfg), unet_inputs())
    # low-rank with sliced widths is covered through ONNX by test_onnx_mixed_forms_unet_dynamic_batch
    folded = fold_subnet(sn, cfg, uniform_kernels(sn, cfg, "shared_basis"))
    out = run(folded.model, unet_inputs())
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    assert max(folded.shared_bases.values()) >= 3  # layers keeping different channels get their own slice


def test_shared_basis_shares_parameters_and_saves_bytes(dit_supernet):
    sn = load_supernet(dit_supernet)
    cfg = SubnetConfig(half_ranks(sn))
    shared = fold_subnet(sn, cfg, uniform_kernels(sn, cfg, "shared_basis"))
    low = fold_subnet(sn, cfg, uniform_kernels(sn, cfg, "low_rank"))
    blocks = shared.model.transformer_blocks
    assert blocks[0].ff.net[2].V is blocks[2].ff.net[2].V  # one Parameter for every layer of the type
    assert blocks[0].attn1.to_q.V is blocks[1].attn1.to_v.V
    assert shared.weight_bytes()["factorised"] < 0.5 * low.weight_bytes()["factorised"]


def test_plan_naming_an_unknown_layer_is_refused(dit_supernet):
    sn = load_supernet(dit_supernet)
    with pytest.raises(FineDeployError, match="does not have"):
        fold_subnet(sn, SubnetConfig(), {"transformer_blocks.9.qkv": "low_rank"})
    with pytest.raises(FineDeployError, match="depth-2 subnet does not have"):
        fold_subnet(sn, SubnetConfig({}, {}, 2), {"transformer_blocks.2.qkv": "low_rank"})


# --- ONNX --------------------------------------------------------------------------------------------


def _initializers(path) -> list[np.ndarray]:
    return [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer]


@pytest.mark.parametrize("form", ["dense", "low_rank", "shared_basis"])
def test_onnx_parity_per_form_dit(dit_supernet, tmp_path, form):
    sn = load_supernet(dit_supernet)
    cfg = {"ranks": half_ranks(sn)}
    plan = make_plan(dit_supernet, cfg, uniform_kernels(sn, cfg, form), batch=2)
    out = tmp_path / "art"
    m = export(plan, "onnx", out)
    ort = [p for p in m.parity if p["runtime"] == "onnxruntime-cpu"]
    assert ort and ort[0]["rel"] <= 1e-5 and ort[0]["passed"]
    saved = json.loads((out / MANIFEST).read_text())
    assert saved["schema"] == 1 and saved["model"] == "model.onnx" and saved["format"] == "onnx"
    assert set(saved["kernels"].values()) == {form}
    assert saved["inputs"][0]["shape"] == [2, 4, 8, 8] and saved["inputs"][2]["range"] == [0, 10]
    assert verify_files(out) == []
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    assert m.weights["onnx_initializers"]["duplicate_bytes"] == 0
    if form == "shared_basis":
        # the qkv basis Uᵀ[:, q rows] appears exactly once although 3 layers use it
        r = cfg["ranks"]["qkv"]
        Ut_q = sn.tensors["basis.qkv.U"][:16, :r].T.numpy()
        hits = [a for a in _initializers(out / "model.onnx") if a.shape == Ut_q.shape and np.allclose(a, Ut_q)]
        assert len(hits) == 1


def test_onnx_bytes_shared_basis_below_low_rank(dit_supernet, tmp_path):
    sn = load_supernet(dit_supernet)
    cfg = {"ranks": half_ranks(sn)}
    sizes = {}
    for form in ("low_rank", "shared_basis"):
        m = export(make_plan(dit_supernet, cfg, uniform_kernels(sn, cfg, form)), "onnx", tmp_path / form)
        sizes[form] = m.weights["onnx_initializers"]["bytes"]
    assert sizes["shared_basis"] < 0.8 * sizes["low_rank"]


def test_onnx_mixed_forms_unet_dynamic_batch(unet_supernet, tmp_path):
    sn = load_supernet(unet_supernet)
    knobs = sn.spec.widths["knobs"]
    cfg = {"ranks": half_ranks(sn), "widths": {k: sorted(v)[len(v) // 2] for k, v in knobs.items()}}
    kernels = mixed_kernels(sn, cfg)
    m = export(make_plan(unet_supernet, cfg, kernels), "onnx", tmp_path / "u", dynamic_batch=True)
    assert set(m.kernels.values()) == {"dense", "low_rank", "shared_basis"}
    batches = sorted(p["inputs"]["batch"] for p in m.parity if p["runtime"] == "onnxruntime-cpu")
    assert batches == [1, 2]  # the batch axis really is dynamic
    assert all(p["rel"] <= 1e-5 for p in m.parity if p["runtime"] == "onnxruntime-cpu")
    assert m.inputs[0]["shape"][0] == "batch"


def test_onnx_fp16_and_external_data(dit_supernet, tmp_path):
    sn = load_supernet(dit_supernet)
    cfg = {"ranks": half_ranks(sn)}
    plan = make_plan(dit_supernet, cfg, uniform_kernels(sn, cfg, "low_rank"))
    m32 = export(plan, "onnx", tmp_path / "f32", external_data_threshold=1024)
    assert (tmp_path / "f32" / "model.onnx.data").is_file() and "model.onnx.data" in m32.files
    assert m32.checks["onnx"]["external_data"] is True
    m16 = export(plan, "onnx", tmp_path / "f16", fp16=True)
    p16 = next(p for p in m16.parity if p["runtime"] == "onnxruntime-cpu")
    assert p16["rel"] <= par.FP16_REL_TOL and p16["tolerance"] == par.FP16_REL_TOL
    ratio = m16.weights["onnx_initializers"]["bytes"] / m32.weights["onnx_initializers"]["bytes"]
    assert 0.45 < ratio < 0.6


# --- diffusers -------------------------------------------------------------------------------------


def test_diffusers_round_trip_through_stock_from_pretrained(dit_supernet, tmp_path):
    from diffusers import DiTTransformer2DModel

    sn = load_supernet(dit_supernet)
    cfg = {"ranks": half_ranks(sn), "depth": 2}
    plan = make_plan(dit_supernet, cfg, uniform_kernels(sn, cfg, "shared_basis"))
    m = export(plan, "diffusers", tmp_path / "d")
    assert m.model == "transformer"  # a pipeline folder: model_index.json, scheduler/, transformer/
    loaded = DiTTransformer2DModel.from_pretrained(str(tmp_path / "d"), subfolder="transformer").eval()
    assert loaded.config.num_layers == 2 and len(loaded.transformer_blocks) == 2
    ref = run(sn.subnet(SubnetConfig.from_json(cfg)), dit_inputs())
    assert torch.allclose(run(loaded, dit_inputs()), ref, atol=1e-6)
    assert any("folded dense" in n for n in m.notes) and set(m.kernels.values()) == {"dense"}
    assert m.parity[-1]["runtime"] == "diffusers.from_pretrained" and m.parity[-1]["rel"] <= 1e-5


# --- bad input and atomic writes -------------------------------------------------------------------


def test_failed_parity_leaves_nothing(dit_supernet, tmp_path, monkeypatch):
    sn = load_supernet(dit_supernet)
    cfg = {"ranks": half_ranks(sn)}
    plan = make_plan(dit_supernet, cfg, uniform_kernels(sn, cfg, "low_rank"))
    monkeypatch.setattr(par, "FP32_REL_TOL", -1.0)  # a check no output can pass
    out = tmp_path / "never"
    with pytest.raises(FineDeployError, match="nothing was written"):
        export(plan, "onnx", out)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temp directory left either


def test_bad_inputs_one_line_errors(dit_supernet, unet_supernet, tmp_path):
    sn = load_supernet(dit_supernet)
    good = make_plan(dit_supernet, {}, {})
    with pytest.raises(FineDeployError, match="--format 'tflite' is unknown"):
        export(good, "tflite", tmp_path / "a")
    with pytest.raises(FineDeployError, match="opset 12 is not supported"):
        export(good, "onnx", tmp_path / "a", opset=12)
    other = Plan(supernet={"path": str(unet_supernet), "sha256": sn.content_hash}, subnet={}, kernels={})
    with pytest.raises(FineDeployError, match="is not the one this plan was made from"):
        export(other, "onnx", tmp_path / "a")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FineDeployError, match="not a fine-deploy export"):
        export(good, "onnx", tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()


def test_cli_export_and_error(dit_supernet, tmp_path):
    from typer.testing import CliRunner

    from fine_deploy.cli import app

    sn = load_supernet(dit_supernet)
    plan_path = tmp_path / "plan.json"
    make_plan(dit_supernet, {"depth": 2}, {"transformer_blocks.0.fc1": "low_rank"}).save(plan_path)
    r = CliRunner().invoke(app, ["export", "--plan", str(plan_path), "--format", "onnx", "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "exported onnx" in r.output and (tmp_path / "o" / MANIFEST).is_file()
    assert json.loads((tmp_path / "o" / MANIFEST).read_text())["supernet"]["sha256"] == sn.content_hash
    r = CliRunner().invoke(app, ["export", "--plan", str(tmp_path / "nope.json"), "--format", "onnx", "-o", "x"])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_runtime_feeds_respect_the_manifest_integer_ranges(dit_supernet, tmp_path):
    """Regression: make_feeds drew class labels from [0, 1000) and ORT failed on a DiT's embedding."""
    from fine_deploy.runtime import SessionOptions, open_session

    plan = make_plan(dit_supernet, {"ranks": {}, "widths": {}, "depth": None}, {})
    plan.save(tmp_path / "plan.json")
    export(tmp_path / "plan.json", "onnx", tmp_path / "art")
    sess = open_session(tmp_path / "art", SessionOptions(threads=1))
    labels = [i for i in sess.inputs if np.dtype(i.dtype).kind in "iu" and "class" in i.name]
    assert labels, [i.name for i in sess.inputs]
    assert sess.declared_ranges[labels[0].name] == (0, 10)
    for seed in range(5):
        feeds = sess.make_feeds(seed=seed, batch=1)
        assert 0 <= int(feeds[labels[0].name].min()) and int(feeds[labels[0].name].max()) < 10
        out = sess.run(feeds)
        assert all(np.isfinite(v).all() for v in out.values())


def test_export_module_checks_a_plain_module_and_runtime_reads_it(dit_supernet, tmp_path, monkeypatch):
    """A module that is no subnet (a study's baseline) goes out as `export` writes one: parity-checked, declared
    inputs, and a folder the runtime opens; a failed check leaves nothing."""
    from fine_deploy.export.api import export_module
    from fine_deploy.runtime import SessionOptions, open_session

    sn = load_supernet(dit_supernet)
    model = sn.subnet(SubnetConfig.from_json({"ranks": half_ranks(sn)}))
    out = tmp_path / "baseline"
    m = export_module(model, sn, out, note="a test baseline")
    ort = [p for p in m.parity if p["runtime"] == "onnxruntime-cpu"]
    assert ort and ort[0]["passed"] and ort[0]["rel"] <= 1e-5
    saved = json.loads((out / MANIFEST).read_text())
    assert saved["notes"] == ["a test baseline"] and saved["options"]["precision"] == "fp32"
    assert verify_files(out) == []
    with open_session(out, SessionOptions(threads=1)) as s:
        feeds = s.make_feeds(seed=0, batch=1)
        labels = next(v for k, v in feeds.items() if "class" in k)
        assert int(labels.max()) < 10  # the declared range reaches the runtime
        assert np.isfinite(next(iter(s.run(feeds).values()))).all()
    monkeypatch.setattr(par, "FP32_REL_TOL", -1.0)
    with pytest.raises(FineDeployError, match="nothing was written"):
        export_module(model, sn, tmp_path / "never", note="x")
    assert not (tmp_path / "never").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f.txt").write_text("user data")
    with pytest.raises(FineDeployError, match="not a fine-deploy export"):
        export_module(model, sn, tmp_path / "taken", note="x")
