"""Precision as a planner knob (issue 14): `plan --precision`, per-precision pricing and quality, and the
exports of such plans run on stock onnxruntime. The default supernet is the issue's own headline model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from typer.testing import CliRunner

from fine_deploy.cli import app
from fine_deploy.export.io_names import export_inputs, run_torch
from fine_deploy.planner.plan import plan
from fine_deploy.planner.schema import Plan, precision_of
from fine_deploy.supernet.core import SubnetConfig, load_supernet

pytestmark = pytest.mark.usefixtures("one_torch_thread")
JETSON = "jetson-orin-nano-4gb"  # the headline's device: TensorRT, fp32 / fp16 / int8


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("cache")
    mp.setenv("FINE_DEPLOY_CACHE", str(d))
    yield d
    mp.undo()


def cli(*args) -> None:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)


def weight_types(path) -> set[int]:
    return {t.data_type for t in onnx.load(str(path)).graph.initializer if int(np.prod(t.dims)) >= 1024}


def stock_run(path, plan: Plan) -> np.ndarray:
    """onnxruntime itself, no project code between, against the fp32 PyTorch subnet on the same inputs."""
    sn = load_supernet(None)
    inputs = export_inputs(sn.adapter, sn.spec.config, 1, plan.inputs["resolution"], 0)
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = s.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    ref = run_torch(sn.subnet(sn.validate(SubnetConfig.from_json(plan.subnet))), inputs, sn.adapter).numpy()
    return y, ref


def test_a_precision_the_device_does_not_run_is_one_line_naming_its_precisions(tmp_path, cache_dir):
    out = tmp_path / "plan.json"
    for asked, fragment in (("fp16", "device host (onnxruntime-cpu) does not run fp16; use one of fp32, int8"),
                            ("int5", "precision 'int5' is unknown")):
        r = CliRunner().invoke(app, ["plan", "--device", "host", "--mem", "2GB", "--precision", asked, "-o", out])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and fragment in lines[0], r.output
        assert not out.exists()
    # refused before any heavy work: no quality table was measured for it
    assert not list(cache_dir.glob("sensitivity-*"))


def test_jetson_headline_plans_fp16_or_lower_priced_at_their_widths_and_exports_16_bit_weights(tmp_path):
    out = tmp_path / "plan.json"
    cli("plan", "--device", JETSON, "--mem", "4GB", "-o", out)
    p = Plan.load(out)
    sn = load_supernet(None)
    layers = [(m["name"], t.name) for t in sn.types for m in t.matrices]
    assert {precision_of(p, n, t) for n, t in layers} <= {"fp16", "int8"}
    assert p.precision.get("*") in ("fp16", "int8") and p.inputs["dtype"] == p.precision["*"]
    ref = plan(JETSON, "4GB", precision="fp32", output=tmp_path / "fp32.json", show=False)
    assert ref.precision == {} and ref.inputs["dtype"] == "fp32"
    if p.subnet == ref.subnet and set(p.precision.values()) == {"fp16"}:  # same subnet: exactly half the bytes
        for part in ("weights", "dense"):
            assert p.predicted["memory_parts"][part] == pytest.approx(ref.predicted["memory_parts"][part] / 2)
    assert p.predicted["memory_parts"]["weights"] <= ref.predicted["memory_parts"]["weights"] / 2
    rows = {r["knob"]: r for r in p.explain}
    assert set(rows["rank.qkv"]["precision"]) <= {"fp16", "int8"}
    assert rows["precision.qkv"]["value"] in ("fp16", "int8")
    cm = p.predicted["cost_model"]["precision"]
    assert cm["asked"] == "auto" and "estimate" in cm["latency"]["fp16"]
    cli("export", "--plan", out, "--format", "onnx", "-o", tmp_path / "onnx", "--precision", "fp16")
    assert weight_types(tmp_path / "onnx" / "model.onnx") == {TensorProto.FLOAT16}
    if set(p.precision.values()) == {"fp16"}:  # the plan's own precision map, honoured without --precision
        cli("export", "--plan", out, "--format", "onnx", "-o", tmp_path / "own")
        assert weight_types(tmp_path / "own" / "model.onnx") == {TensorProto.FLOAT16}


def test_host_int8_plan_exports_an_onnx_stock_onnxruntime_runs_with_int8_weights(tmp_path):
    out = tmp_path / "plan.json"
    cli("plan", "--device", "host", "--mem", "2GB", "--precision", "int8", "-o", out)
    p = Plan.load(out)
    assert p.precision == {"*": "int8"} and p.inputs["dtype"] == "int8"
    how = p.predicted["cost_model"]["precision"]["latency"]["int8"]
    assert "not measured" in how  # ONNX Runtime CPU's int8 speed is not assumed
    cli("export", "--plan", out, "--format", "onnx", "-o", tmp_path / "int8")
    path = tmp_path / "int8" / "model.onnx"
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    int8 = {t.data_type for t in proto.graph.initializer} & {TensorProto.INT8, TensorProto.UINT8}
    assert int8 and ({"QuantizeLinear", "DequantizeLinear"} <= ops or "MatMulInteger" in ops)
    y, ref = stock_run(path, p)
    assert y.shape == ref.shape and np.isfinite(y).all()
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.2  # int8 rounding, not a broken graph


def test_auto_under_a_tight_memory_budget_lowers_precision_before_cutting_ranks(tmp_path):
    dev = "jetson-orin-nano-4gb"  # states fp16 and int8 rates: auto chooses between them
    full = plan(dev, "3GB", precision="fp16", output=tmp_path / "a.json", show=False)
    parts = full.predicted["memory_parts"]
    budget = int(full.predicted["memory_bytes"] - 0.3 * parts["weights"])
    cut = plan(dev, f"{budget}B", precision="fp16", output=tmp_path / "b.json", show=False)
    auto = plan(dev, f"{budget}B", output=tmp_path / "c.json", show=False)
    assert auto.predicted["memory_bytes"] <= budget
    assert "int8" in auto.precision.values()
    # int8 weights cost less quality than the rank or depth cuts an fp16-only plan needs for the same budget
    assert auto.predicted["quality_loss"] < cut.predicted["quality_loss"]
    assert auto.subnet["ranks"] == full.subnet["ranks"]


def test_auto_on_the_host_leaves_out_int8_whose_speed_it_cannot_price(tmp_path):
    """ONNX Runtime CPU states no int8 rate and its static int8 export measured slower than fp32 here: an int8
    plan priced at the fp32 figure could break its latency budget, so auto plans fp32 and says why."""
    p = plan("host", "2GB", output=tmp_path / "p.json", show=False)
    rec = p.predicted["cost_model"]["precision"]
    assert rec["candidates"] == ["fp32"] and p.precision == {}
    assert "states no int8 rate" in rec["left_out"]["int8"] and "--precision int8" in rec["left_out"]["int8"]


def test_precision_losses_are_measured_once_cached_and_grow_as_bits_drop(tmp_path, monkeypatch):
    from fine_deploy.planner.sensitivity import STAR, precision_losses, sensitivity_table

    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("FINE_DEPLOY_CACHE", str(cache_dir))
    sn = load_supernet(None)
    table = sensitivity_table(sn, progress=False)
    assert "precision" not in table  # the stored table is not changed: losses per precision sit beside it
    got = precision_losses(sn, table, ("fp32", "fp16"), progress=False)
    path = next(cache_dir.glob("sensitivity-precision-*"))
    assert set(json.loads(path.read_text())["losses"][STAR]) == {"fp16"}
    more = precision_losses(sn, table, ("fp16", "int8", "pal4"), progress=False)  # only the missing ones measured
    assert set(json.loads(path.read_text())["losses"][STAR]) == {"fp16", "int8", "pal4"}
    for t in [*(t.name for t in sn.types), STAR]:
        assert more["losses"][t]["fp16"] == got["losses"][t]["fp16"]
        assert 0 < more["losses"][t]["fp16"] < more["losses"][t]["int8"] < more["losses"][t]["pal4"]
    # the stored table is held-out loss: precision errors are put on its scale, and the plan says how
    assert more["metric"] == table["metric"] and "least-squares" in more["scaled"]


def test_layers_are_priced_per_precision_and_say_how():
    from fine_deploy.cost.lut import Lut
    from fine_deploy.cost.profiles import load_profile
    from fine_deploy.cost.roofline import Roofline, spec_roofline
    from fine_deploy.cost.shapes import LayerShape
    from fine_deploy.planner.costs import CostModel, precision_ratio

    shape = LayerShape("linear", 256, 256, 64)
    jetson = load_profile(JETSON, probe=False)
    spec = CostModel.build(jetson)  # no LUT: the spec roofline at each dtype's own peak
    s32, _ = spec.layer_seconds(shape, "dense", None, "fp32")
    s16, _ = spec.layer_seconds(shape, "dense", None, "fp16")
    assert s16 == pytest.approx(spec_roofline(jetson, "fp16").layer_seconds(shape, "dense", None, "fp16"))
    assert s16 < s32
    # a LUT measures fp32: another precision is its figure x the profile's roofline ratio
    fitted = Roofline(1e11, 2e10, 1e-6, "fitted", 10, 0.1).to_dict()
    lut = Lut(JETSON, "tensorrt", {}, {}, {}, {}, 2e-5, roofline=fitted, complete=True)
    measured = CostModel.build(jetson, lut)
    m32, _ = measured.layer_seconds(shape, "dense", None, "fp32")
    m16, _ = measured.layer_seconds(shape, "dense", None, "fp16")
    assert m16 == pytest.approx(m32 * precision_ratio(jetson, shape, "dense", None, "fp16"))
    assert any("ratio" in how for how in measured.describe()["precision_figures"]["fp16"])
    # ONNX Runtime CPU states no int8 rate: int8 keeps the fp32 figure, and says it was not measured
    host = load_profile("host")
    cpu = CostModel.build(host)
    assert cpu.layer_seconds(shape, "dense", None, "int8")[0] == cpu.layer_seconds(shape, "dense", None, "fp32")[0]
    assert any("not measured" in how for how in cpu.describe()["precision_figures"]["int8"])
    # weights at their bits; activations at the compute dtype's width where the device has a rate for it (a
    # palette computes in fp16), else fp32 (ONNX Runtime CPU's int8 graphs compute around the matmuls in fp32)
    w32 = cpu.weight_bytes(shape, "dense", None, "fp32")[0]
    assert cpu.weight_bytes(shape, "dense", None, "int8")[0] == w32 / 4
    assert cpu.weight_bytes(shape, "dense", None, "pal4")[0] == w32 / 8
    a32 = cpu.activation_bytes(shape, "dense", None, "fp32")
    assert cpu.activation_bytes(shape, "dense", None, "int8") == a32
    assert CostModel.build(cpu.profile, None, "int8").bytes_per_elem == 4
    phone = CostModel.build(load_profile("iphone", probe=False))
    assert phone.activation_bytes(shape, "dense", None, "pal4") == a32 / 2
    assert spec.activation_bytes(shape, "dense", None, "int8") == a32 / 4


def test_auto_leaves_int8_out_where_its_export_would_lack_calibration_images(dit_supernet, tmp_path):
    """A converted supernet has no training images here: static int8 could not calibrate, so `auto` plans
    without int8 (and says why); --precision int8 still plans it."""
    dev = "jetson-orin-nano-4gb"  # states an int8 rate: only the missing images keep int8 out
    p = plan(dev, "3GB", supernet=dit_supernet, output=tmp_path / "a.json", show=False)
    rec = p.predicted["cost_model"]["precision"]
    assert rec["candidates"] == ["fp16"] and "calibrates" in rec["left_out"]["int8"]
    assert p.precision == {"*": "fp16"}
    pinned = plan(dev, "3GB", supernet=dit_supernet, precision="int8", output=tmp_path / "b.json", show=False)
    assert pinned.precision == {"*": "int8"}
