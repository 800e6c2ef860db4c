"""A converted supernet tells the truth about the model it came from (issue 19).

Dense DiT and UNet2DModel built by stock diffusers, converted with a rank cap below the exact rank (so the
factors alone cannot reproduce them), planned with nothing binding and exported to ONNX: the file that
stock onnxruntime runs equals the model that stock diffusers loads from the user's folder within 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import dit_inputs, make_dit, make_unet, unet_inputs
from typer.testing import CliRunner

from fine_deploy.cli import app
from fine_deploy.errors import FineDeployError

CAP = 4  # far below the exact rank L·min(m1, m2): the rank cap applies to every type


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("conversion")
    out = {}
    for name, make in (("dit", make_dit), ("unet", make_unet)):
        make(seed=3).save_pretrained(root / name)
        out[name] = root / name
    return out


def _ort(path, inputs: dict) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np_types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    feeds = {i.name: inputs[i.name].numpy().astype(np_types[i.type]) for i in s.get_inputs()}
    return s.run(None, feeds)[0]


def _diffusers(folder, inputs: dict) -> np.ndarray:
    from diffusers import DiTTransformer2DModel, UNet2DModel

    cls = DiTTransformer2DModel if "hidden_states" in inputs else UNet2DModel
    with torch.no_grad():
        return cls.from_pretrained(str(folder)).eval()(**inputs).sample.numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("kind,cap", [("dit", "max_rank"), ("unet", "max_rank"), ("dit", "default")])
def test_full_plan_exports_the_source_model(kind, cap, models, tmp_path, monkeypatch):
    from fine_deploy.export import export
    from fine_deploy.planner.plan import plan
    from fine_deploy.supernet import convert as cv

    src = models[kind]
    if cap == "default":  # convert's own cap, min(m1, m2), as it applies to published sizes
        monkeypatch.setattr(cv, "EXACT_FIT_ENTRIES", 0)
        sn = cv.convert(src, tmp_path / "sn")
        assert all(t.factor_rank == min(t.m1, t.m2) for t in sn.types if t.source_top)
        assert any(t.source_top for t in sn.types)
    else:
        sn = cv.convert(src, tmp_path / "sn", max_rank=CAP)
        assert all(t.source_top and t.factor_rank <= CAP < t.max_rank for t in sn.types)
    # the factors alone are far from the model: the exact top option is what makes the full plan exact
    assert sn.spec.conversion["factors_only"]["rel_l2"] > 0.01
    assert sn.spec.conversion["full_model"]["rel_l2"] < 1e-6
    p = plan("host", "8GB", supernet=tmp_path / "sn", output=tmp_path / "plan.json", show=False)
    assert p.binding is None
    assert p.subnet["ranks"] == {t.name: t.max_rank for t in sn.types}
    m = export(tmp_path / "plan.json", "onnx", tmp_path / "out")
    assert m.checks["source"]["expected_exact"] and m.checks["source"]["rel"] <= 1e-5
    inputs = dit_inputs(batch=1) if kind == "dit" else unet_inputs(batch=1)
    got, want = _ort(tmp_path / "out" / "model.onnx", inputs), _diffusers(src, inputs)
    assert _rel(got, want) <= 1e-5


def test_lower_options_are_measured_approximations(models, tmp_path):
    from fine_deploy.export import export
    from fine_deploy.planner.plan import plan
    from fine_deploy.supernet.convert import convert

    sn = convert(models["dit"], tmp_path / "sn", max_rank=CAP)
    p = plan("host", "8GB", supernet=tmp_path / "sn", max_loss=0.2, latency=None, output=tmp_path / "p.json",
             show=False)
    table = sn.spec.conversion["types"]
    # each type's factors-only output error was measured against the source, and is what it is (not 0)
    assert all(t["output"]["rel_mse"] > 0 and 0 < t["weight_error"] < 1 for t in table.values())
    # a plan that gives up quality says so against the source, and its export records how far it is
    assert p.predicted["quality"]["reference"] == "source"
    if p.predicted["quality_loss"] > 0:
        m = export(tmp_path / "p.json", "onnx", tmp_path / "o")
        assert not m.checks["source"]["expected_exact"] and m.checks["source"]["rel_l2"] > 0


def test_cli_convert_and_plan_print_the_conversion_error(models, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["convert", "--from-diffusers", str(models["unet"]), "-o", str(tmp_path / "sn"),
                              "--max-rank", str(CAP)])
    assert res.exit_code == 0, res.output
    assert "conversion error vs the source model" in res.output
    assert "factors only" in res.output and "exact top option" in res.output
    res = runner.invoke(app, ["plan", "--device", "host", "--mem", "8GB", "--supernet", str(tmp_path / "sn"),
                              "-o", str(tmp_path / "plan.json")], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("quality"))
    assert "vs the source model" in line and "exact top options" in line


def test_without_exact_top_no_plan_shows_zero_loss(models, tmp_path):
    from fine_deploy.export import export

    runner = CliRunner()
    res = runner.invoke(app, ["convert", "--from-diffusers", str(models["dit"]), "-o", str(tmp_path / "sn"),
                              "--max-rank", str(CAP), "--no-exact-top"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["plan", "--device", "host", "--mem", "8GB", "--supernet", str(tmp_path / "sn"),
                              "-o", str(tmp_path / "plan.json"), "--pareto", str(tmp_path / "front")],
                        env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("quality"))
    assert "loss 0 " not in line and "includes the full model's conversion error" in line
    doc = json.loads((tmp_path / "plan.json").read_text())
    conv = doc["predicted"]["quality"]["conversion_error"]
    assert conv > 1e-3 and doc["predicted"]["quality_loss"] >= conv * (1 - 1e-6)
    front = json.loads((tmp_path / "front" / "pareto.json").read_text())
    assert all(p["quality_loss"] >= conv * (1 - 1e-6) for p in front["latency_front"] + front["memory_front"])
    # export measures the same gap on the file itself, and does not pretend it is the source
    m = export(tmp_path / "plan.json", "onnx", tmp_path / "out")
    assert not m.checks["source"]["expected_exact"] and m.checks["source"]["rel_l2"] > 0.03


def test_export_against_checks_the_folder(models, tmp_path):
    import shutil

    from fine_deploy.export import export
    from fine_deploy.planner.plan import plan
    from fine_deploy.supernet.convert import convert

    moved = tmp_path / "moved"
    shutil.copytree(models["dit"], tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "sn", max_rank=CAP)
    plan("host", "8GB", supernet=tmp_path / "sn", output=tmp_path / "plan.json", show=False)
    (tmp_path / "src").rename(moved)
    m = export(tmp_path / "plan.json", "onnx", tmp_path / "a")
    assert "source" not in m.checks and any("--against" in n for n in m.notes)
    m = export(tmp_path / "plan.json", "onnx", tmp_path / "b", against=moved)
    assert m.checks["source"]["passed"] and m.checks["source"]["path"] == str(moved)
    with pytest.raises(FineDeployError, match="not the ones this supernet was converted from"):
        export(tmp_path / "plan.json", "onnx", tmp_path / "c", against=models["unet"])
    assert not (tmp_path / "c").exists()


def test_source_option_is_dense_only_and_ranks_between_are_refused(models, tmp_path):
    from fine_deploy.export.fold import fold_subnet
    from fine_deploy.supernet.convert import convert
    from fine_deploy.supernet.core import SubnetConfig

    sn = convert(models["dit"], tmp_path / "sn", max_rank=CAP)
    t = sn.types[0]
    with pytest.raises(FineDeployError, match="neither a factor rank"):
        sn.validate(SubnetConfig(ranks={t.name: t.factor_rank + 1}))
    name = t.matrices[0]["name"]
    with pytest.raises(FineDeployError, match="stored dense only"):
        fold_subnet(sn, SubnetConfig(), {name: "low_rank"})
    # the source option is the source weight bit for bit, the factor options are folds
    assert torch.equal(sn.weight(name, t.max_rank), sn.tensors[f"source.{name}"])
    assert not torch.equal(sn.weight(name, t.factor_rank), sn.tensors[f"source.{name}"])


def test_schema_1_supernets_still_load_with_their_hash(dit_supernet, tmp_path):
    from fine_deploy.supernet.core import Supernet
    from fine_deploy.zoo import default_supernet_path

    # a schema-1 file as fine-deploy wrote them (no conversion record): the shipped default's weights under it
    sn = Supernet.load(default_supernet_path())
    sn.spec.schema, sn.spec.conversion = 1, {}
    sn.save(tmp_path / "old")
    raw = json.loads((tmp_path / "old" / "supernet.json").read_text())
    assert raw["schema"] == 1 and "conversion" not in raw
    old = Supernet.load(tmp_path / "old")
    assert old.spec.schema == 1 and old.spec.to_json() == raw and old.content_hash == sn.content_hash
    assert not old.exact_top


def test_supernet_converted_before_the_measurement_is_not_called_the_source(tmp_path):
    from fine_deploy.planner.explain import quality_line
    from fine_deploy.planner.plan import plan
    from fine_deploy.supernet.convert import model_to_supernet

    # what convert wrote before schema 2: factors only, no conversion record
    sn = model_to_supernet(make_dit(seed=3), max_rank=CAP, als_iters=2, provenance={"source": "diffusers"})
    sn.spec.schema = 1
    sn.save(tmp_path / "old")
    assert json.loads((tmp_path / "old" / "supernet.json").read_text())["schema"] == 1
    p = plan("host", "8GB", supernet=tmp_path / "old", show=False)
    q = p.predicted["quality"]
    assert q["reference"] == "full supernet" and q["conversion_error"] is None
    line = quality_line(p.predicted["quality_loss"], q)
    assert "NOT the source model" in line and "re-convert" in line
