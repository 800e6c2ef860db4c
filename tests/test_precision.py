"""Precision as a plan knob, export side (issue 14): plan.json's `precision` map, --precision, fp16 and int8 ONNX
that stock onnxruntime runs, TensorRT builder flags, Core ML palettes, per-precision parity bounds, and the
samples an fp16 / int8 export draws next to the fp32 one's."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto
from test_cli_validation import refused
from typer.testing import CliRunner

from fine_deploy.cli import app
from fine_deploy.cost.profiles import load_profile, validate_profile_dict
from fine_deploy.errors import FineDeployError
from fine_deploy.export import export
from fine_deploy.export import parity as par
from fine_deploy.export import tensorrt_export as te
from fine_deploy.export.io_names import export_inputs, run_torch
from fine_deploy.planner.schema import Plan, precision_of
from fine_deploy.runtime.artifact import resolve_artifact
from fine_deploy.supernet.core import SubnetConfig, load_supernet
from fine_deploy.train.data import recipe_calibration

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# sample()'s images are in [-1, 1]. Measured on the default supernet's full plan, 6 images, 6 DDIM steps:
# mean |fp16 - fp32| 8e-4, |int8 static - fp32| 0.031 (10 images, 10 steps: 6e-4, 0.030, dynamic int8 0.012);
# the same export at another seed differs by 0.24-0.28 (digits are mostly background). The bounds keep a
# 2-6x margin over the measurement and stay 4x under another seed's images.
SAMPLE_DELTA = {"fp16": 0.005, "int8": 0.06}


def cli(*args: str) -> None:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The issue's own command: the default supernet planned for this host, then exported at three precisions."""
    d = tmp_path_factory.mktemp("precision")
    cli("plan", "--device", "host", "--mem", "2GB", "-o", d / "plan.json")
    cli("export", "--plan", d / "plan.json", "--format", "onnx", "-o", d / "fp32")
    cli("export", "--plan", d / "plan.json", "--format", "onnx", "-o", d / "fp16", "--precision", "fp16")
    cli("export", "--plan", d / "plan.json", "--format", "onnx", "-o", d / "int8", "--precision", "int8")
    return d


def torch_reference(plan_path, manifest) -> tuple[dict, np.ndarray]:
    """The PyTorch fp32 subnet's output on the export's own inputs, computed here, not read from the manifest."""
    plan = Plan.load(plan_path)
    sn = load_supernet(None)
    model = sn.subnet(sn.validate(SubnetConfig.from_json(plan.subnet)))
    inputs = export_inputs(sn.adapter, sn.spec.config, manifest["options"]["batch"], manifest["options"]["resolution"],
                           0)
    return {k: v.numpy() for k, v in inputs.items()}, run_torch(model, inputs, sn.adapter).numpy()


def stock_run(path, feeds: dict) -> np.ndarray:
    """onnxruntime itself, no project code between: what a user's own deployment does."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


def weight_types(path) -> set[int]:
    """Element types of the initializers that are real weight tensors (>= 1024 elements)."""
    return {t.data_type for t in onnx.load(str(path)).graph.initializer if int(np.prod(t.dims)) >= 1024}


def test_fp16_export_has_16_bit_weights_runs_on_stock_onnxruntime_and_meets_35_db(work):
    m = json.loads((work / "fp16" / "manifest.json").read_text())
    assert m["options"]["precision"] == "fp16"
    assert weight_types(work / "fp16" / "model.onnx") == {TensorProto.FLOAT16}
    assert weight_types(work / "fp32" / "model.onnx") == {TensorProto.FLOAT}
    proto = onnx.load(str(work / "fp16" / "model.onnx"))  # inputs/outputs kept fp32 (Casts at the edges)
    assert {i.type.tensor_type.elem_type for i in proto.graph.output} == {TensorProto.FLOAT}
    feeds, ref = torch_reference(work / "plan.json", m)
    p = par.compare(stock_run(work / "fp16" / "model.onnx", feeds), ref, runtime="ort", reference="torch",
                    tolerance=None, inputs={})
    assert p.psnr_db >= 35.0
    chk = m["checks"]["precision"]
    assert chk["bound"] == {"rel": par.FP16_REL_TOL, "min_psnr_db": 35.0}
    assert chk["measured"]["psnr_db"] >= 35.0 and chk["measured"]["rel"] <= par.FP16_REL_TOL
    bytes16, bytes32 = (json.loads((work / n / "manifest.json").read_text())["weights"]["onnx_initializers"]["bytes"]
                        for n in ("fp16", "fp32"))
    assert bytes16 < 0.6 * bytes32


def test_int8_static_export_is_qdq_runs_on_stock_onnxruntime_and_records_its_psnr(work):
    m = json.loads((work / "int8" / "manifest.json").read_text())
    proto = onnx.load(str(work / "int8" / "model.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [t for t in proto.graph.initializer if t.data_type == TensorProto.INT8 and int(np.prod(t.dims)) >= 1024]
    assert int8, "no int8 weight tensors"
    chk = m["checks"]["precision"]
    assert chk["precision"] == "int8" and chk["quantization"]["mode"] == "static"
    assert chk["calibration"]["samples"] > 0 and "calibration images" in chk["calibration"]["data"]
    feeds, ref = torch_reference(work / "plan.json", m)
    p = par.compare(stock_run(work / "int8" / "model.onnx", feeds), ref, runtime="ort", reference="torch",
                    tolerance=None, inputs={})
    assert p.psnr_db >= par.INT8_MIN_PSNR_DB
    assert chk["measured"]["psnr_db"] == pytest.approx(p.psnr_db, abs=0.01)  # the manifest states what was measured
    assert chk["bound"]["min_psnr_db"] == par.INT8_MIN_PSNR_DB
    held_out = chk["measured_on_data"]  # the quantisation measured on inputs it was not calibrated on
    assert held_out["samples"] == 8 and 10.0 < held_out["psnr_db_min"] <= held_out["psnr_db_median"]


def test_int8_dynamic_needs_no_calibration_data_and_goes_out_with_external_data_and_a_dynamic_batch(work, tmp_path):
    m = export(work / "plan.json", "onnx", tmp_path / "d", precision="int8", int8_mode="dynamic",
               external_data_threshold=1024, dynamic_batch=True)
    assert "model.onnx.data" in m.files  # what a model over protobuf's 2 GB gets
    ops = {n.op_type for n in onnx.load(str(tmp_path / "d" / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert m.checks["precision"]["calibration"] is None
    assert m.checks["precision"]["measured"]["psnr_db"] >= par.INT8_MIN_PSNR_DB
    assert len(m.parity) == 2 and all(p["passed"] for p in m.parity)  # batch 1 and batch 2


def test_static_int8_without_calibration_data_is_one_line(work, tmp_path, dit_supernet):
    # the API with no data source at all
    with pytest.raises(FineDeployError, match="static int8 needs calibration data.*--calib"):
        export(work / "plan.json", "onnx", tmp_path / "x", precision="int8")
    assert not (tmp_path / "x").exists()
    # the CLI: a --calib that is not there, and a converted supernet whose training data is not recorded
    refused(["export", "--plan", str(work / "plan.json"), "--format", "onnx", "-o", str(tmp_path / "y"),
             "--precision", "int8", "--calib", str(tmp_path / "nope.npy")], tmp_path, match="--calib", max_s=20)
    sn = load_supernet(dit_supernet)
    Plan(supernet={"path": str(dit_supernet), "sha256": sn.content_hash}, subnet={}).save(tmp_path / "p.json")
    refused(["export", "--plan", str(tmp_path / "p.json"), "--format", "onnx", "-o", str(tmp_path / "z"),
             "--precision", "int8"], tmp_path, match="needs calibration data", max_s=20)
    # wrong-shaped images are refused before any work, naming both shapes
    np.save(tmp_path / "rgb.npy", np.zeros((4, 3, 16, 16), np.float32))
    refused(["export", "--plan", str(work / "plan.json"), "--format", "onnx", "-o", str(tmp_path / "w"),
             "--precision", "int8", "--calib", str(tmp_path / "rgb.npy")], tmp_path, match="[3, 16, 16]", max_s=20)


@pytest.mark.parametrize("fmt, precision, match", [
    ("coreml", "int8", "use one of fp32, fp16, pal8, pal6, pal4"),
    ("onnx", "pal4", "pal4 is offered for coreml"),
    ("diffusers", "int8", "use one of fp32, fp16"),
    ("onnx", "int3", "is unknown"),
])
def test_precision_the_format_cannot_write_is_one_line(work, tmp_path, fmt, precision, match):
    refused(["export", "--plan", str(work / "plan.json"), "--format", fmt, "-o", str(tmp_path / "o"),
             "--precision", precision], tmp_path, match=match, max_s=20)


def test_int8_tensorrt_must_be_static(work, tmp_path):
    refused(["export", "--plan", str(work / "plan.json"), "--format", "trt", "-o", str(tmp_path / "o"),
             "--precision", "int8", "--int8-mode", "dynamic"], tmp_path, match="--int8-mode static", max_s=20)


def test_tensorrt_bundles_carry_the_precision_flags(work, tmp_path):
    export(work / "plan.json", "trt", tmp_path / "f16", precision="fp16")
    assert "--fp16" in (tmp_path / "f16" / te.TRTEXEC_FILE).read_text()
    assert "--int8" not in (tmp_path / "f16" / te.TRTEXEC_FILE).read_text()
    assert weight_types(tmp_path / "f16" / "model.onnx") == {TensorProto.FLOAT}  # fp16 is a builder flag
    m = export(work / "plan.json", "trt", tmp_path / "i8", precision="int8", recipe_calib=recipe_calibration)
    line = (tmp_path / "i8" / te.TRTEXEC_FILE).read_text().splitlines()[-1].split()
    assert "--int8" in line and "--fp16" in line
    script = (tmp_path / "i8" / te.BUILD_SCRIPT).read_text()
    assert '"int8": true' in script and "BuilderFlag.INT8" in script
    # TensorRT's explicit quantization: Q/DQ in the ONNX, int8 (not uint8) activations with zero point 0
    proto = onnx.load(str(tmp_path / "i8" / "model.onnx"))
    assert "QuantizeLinear" in {n.op_type for n in proto.graph.node}
    zero_points = [t for t in proto.graph.initializer if t.name.endswith("_zero_point")]
    assert zero_points and all(t.data_type == TensorProto.INT8 for t in zero_points)
    assert all(not onnx.numpy_helper.to_array(t).any() for t in zero_points)
    assert m.checks["tensorrt"]["ok"] and m.checks["precision"]["quantization"]["activations"] == "int8 symmetric"
    assert te.trtexec_command("m.onnx", {}, dynamic=False, **te.precision_flags("bf16"))[-1] == "--bf16"


def _package_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_coreml_pal8_package_holds_palettised_weights(work, tmp_path):
    pytest.importorskip("coremltools")
    m8 = export(work / "plan.json", "coreml", tmp_path / "pal8", precision="pal8")
    m16 = export(work / "plan.json", "coreml", tmp_path / "f16", precision="fp16")
    chk = m8.checks["coreml"]
    assert chk["palette_bits"] == [8] and chk["palettised_ops"] > 0 and chk["palettised_weights"] > 0
    assert "palettised_ops" not in m16.checks["coreml"]
    # 8-bit indices in place of fp16 values: the palettised tensors halve, the small ones stay fp16
    b8, b16 = _package_bytes(tmp_path / "pal8"), _package_bytes(tmp_path / "f16")
    assert b8 < 0.65 * b16
    assert m8.options["precision"] == "pal8"


def test_plan_precision_map_is_honoured_and_old_plans_stay_fp32(work, tmp_path):
    raw = json.loads((work / "plan.json").read_text())
    assert "precision" not in raw  # today's planner writes none: the fp32 plan of before the field
    m = json.loads((work / "fp32" / "manifest.json").read_text())
    assert m["options"]["precision"] == "fp32" and m["checks"]["precision"]["bound"]["rel"] == par.FP32_REL_TOL
    raw["precision"] = {"*": "fp16"}
    (tmp_path / "p16.json").write_text(json.dumps(raw))
    m = export(tmp_path / "p16.json", "onnx", tmp_path / "o")
    assert m.options["precision"] == "fp16" and weight_types(tmp_path / "o" / "model.onnx") == {TensorProto.FLOAT16}
    # fp16 beside int8 in one graph is not offered: refused with the way out
    raw["precision"] = {"*": "fp16", "qkv": "int8"}
    (tmp_path / "mix.json").write_text(json.dumps(raw))
    with pytest.raises(FineDeployError, match=r"fp16\+int8 \(fp16: 24 layers, int8: 6 layers.*--precision"):
        export(tmp_path / "mix.json", "onnx", tmp_path / "mix")
    with pytest.raises(FineDeployError, match="--format coreml cannot mix"):
        export(_with(raw, tmp_path, {"*": "pal8", "qkv": "fp16"}), "coreml", tmp_path / "mixc")
    raw["precision"] = {"*": "int4"}
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(FineDeployError, match="precision 'int4' for '\\*' is not one of"):
        Plan.load(tmp_path / "bad.json")
    raw["precision"] = {"nolayer": "fp16"}
    (tmp_path / "unk.json").write_text(json.dumps(raw))
    with pytest.raises(FineDeployError, match="neither a layer nor a type"):
        export(tmp_path / "unk.json", "onnx", tmp_path / "unk")


def _with(raw: dict, tmp_path, precision: dict):
    path = tmp_path / f"plan-{len(list(tmp_path.glob('plan-*.json')))}.json"
    path.write_text(json.dumps({**raw, "precision": precision}))
    return path


def _weight_dtypes_by_scope(path) -> dict[str, set[int]]:
    """Module scope of each MatMul/Gemm/MatMulInteger ('attn1/to_q', 'ff/net.0/proj', ...) -> its weights' types."""
    proto = onnx.load(str(path))
    init = {t.name: t.data_type for t in proto.graph.initializer}
    out: dict[str, set[int]] = {}
    for n in proto.graph.node:
        if n.op_type in ("MatMul", "Gemm", "MatMulInteger") and n.name.startswith("/model/transformer_blocks."):
            # module names are lower case; op names (and ORT's renamed fusions, "MatMul/MatMulAddFusion") are not
            scope = "/".join(itertools.takewhile(lambda seg: not seg[:1].isupper(), n.name.split("/")[3:]))
            out.setdefault(scope, set()).update(init[i] for i in n.input if i in init)
    return out


def test_a_plan_mixing_fp32_with_fp16_or_int8_layers_exports_each_layer_at_its_own(work, tmp_path):
    raw = json.loads((work / "plan.json").read_text())
    m = export(_with(raw, tmp_path, {"*": "fp16", "qkv": "fp32"}), "onnx", tmp_path / "f16")
    types = _weight_dtypes_by_scope(tmp_path / "f16" / "model.onnx")
    assert types["attn1/to_q"] == types["attn1/to_k"] == {TensorProto.FLOAT}  # the qkv layers stayed fp32
    assert types["attn1/to_out.0"] == types["ff/net.0/proj"] == {TensorProto.FLOAT16}
    chk = m.checks["precision"]
    assert chk["layers"] == {"fp16": 24, "fp32": 6} and chk["bound"]["min_psnr_db"] == par.MIN_PSNR_DB
    m = export(_with(raw, tmp_path, {"fc1": "int8"}), "onnx", tmp_path / "i8", int8_mode="dynamic")
    types = _weight_dtypes_by_scope(tmp_path / "i8" / "model.onnx")
    assert TensorProto.INT8 in types["ff/net.0/proj"]  # fc1 quantised (MatMulInteger on int8 weights)
    assert types["ff/net.2"] == types["attn1/to_q"] == {TensorProto.FLOAT}  # fc2 and qkv left float
    assert m.options["precision"] == "int8" and m.checks["precision"]["quantization"]["nodes_left_float"] > 0
    # TensorRT: Q/DQ around the int8 layers only, and no --fp16, so the rest stays fp32
    export(_with(raw, tmp_path, {"fc1": "int8"}), "trt", tmp_path / "t8", recipe_calib=recipe_calibration)
    line = (tmp_path / "t8" / te.TRTEXEC_FILE).read_text().splitlines()[-1].split()
    assert "--int8" in line and "--fp16" not in line


def test_precision_of_reads_layer_then_type_then_star_then_fp32():
    plan = Plan(supernet={}, subnet={}, precision={"*": "fp16", "qkv": "int8", "transformer_blocks.0.qkv": "fp32"})
    assert precision_of(plan, "transformer_blocks.0.qkv", "qkv") == "fp32"
    assert precision_of(plan, "transformer_blocks.1.qkv", "qkv") == "int8"
    assert precision_of(plan, "transformer_blocks.1.fc1", "fc1") == "fp16"
    assert precision_of(Plan(supernet={}, subnet={}), "transformer_blocks.1.fc1", "fc1") == "fp32"
    assert "precision" not in Plan(supernet={}, subnet={}).to_json()


def test_fp16_and_int8_exports_sample_the_fp32_exports_images(work):
    from fine_deploy.sample import sample

    kw = dict(steps=6, seed=0, n=6, threads=1)
    ref = sample(work / "fp32", **kw).images.astype(np.float64)
    other_seed = sample(work / "fp32", **{**kw, "seed": 100}).images.astype(np.float64)
    assert np.abs(other_seed - ref).mean() > 3 * SAMPLE_DELTA["int8"]  # the bound tells images apart
    for name in ("fp16", "int8"):
        assert resolve_artifact(work / name).precision == name  # what bench records per model
        img = sample(work / name, **kw).images.astype(np.float64)
        assert np.isfinite(img).all()
        assert np.abs(img - ref).mean() <= SAMPLE_DELTA[name], name


def test_profiles_list_their_precisions_with_sources():
    assert load_profile("jetson-orin", probe=False).precisions == ("fp32", "fp16", "int8")
    assert "fp8" in load_profile("h100", probe=False).precisions
    assert "fp8" not in load_profile("a100", probe=False).precisions
    assert {"pal8", "pal6", "pal4", "fp16"} <= set(load_profile("iphone", probe=False).precisions)
    for name in ("jetson-orin", "rtx-4090", "a100", "h100", "iphone", "mac"):
        assert load_profile(name, probe=False).precisions_source, name
    with pytest.raises(FineDeployError, match="does not run pal4; use one of fp32, fp16, int8"):
        load_profile("jetson-orin", probe=False).require_precision("pal4")


def test_a_profile_without_precisions_falls_back_to_its_dtypes_and_a_bad_one_is_refused():
    from fine_deploy.paths import shipped_profiles

    data = yaml.safe_load((shipped_profiles() / "a100-80gb.yaml").read_text())
    data.pop("precisions"), data.pop("precisions_source")
    assert validate_profile_dict(dict(data), "old.yaml").precisions == ("fp32", "fp16", "bf16", "int8")  # not tf32
    with pytest.raises(FineDeployError, match="precision 'int5' is unknown"):
        validate_profile_dict({**data, "precisions": ["fp16", "int5"]}, "bad.yaml")


def test_fp16_flag_and_precision_must_agree(work, tmp_path):
    with pytest.raises(FineDeployError, match="--fp16 and --precision int8 disagree"):
        export(work / "plan.json", "onnx", tmp_path / "o", fp16=True, precision="int8")
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


def test_a_pipelines_int8_tensorrt_bundle_quantises_the_denoiser_only(tmp_path):
    from tiny_pipelines import sd_pipeline

    cli("convert", "--from-diffusers", sd_pipeline(tmp_path / "src"), "-o", tmp_path / "sn")
    cli("plan", "--device", "host", "--mem", "2GB", "--supernet", tmp_path / "sn", "-o", tmp_path / "plan.json")
    sn = load_supernet(tmp_path / "sn")
    x = export_inputs(sn.adapter, sn.spec.config, 1, None, 0, sn.text_tokens)[sn.adapter.sample_input]
    latents = np.random.default_rng(0).standard_normal((8, *x.shape[1:])).astype(np.float32)
    np.save(tmp_path / "latents.npy", latents)  # a converted pipeline records no training data: --calib
    cli("export", "--plan", tmp_path / "plan.json", "--supernet", tmp_path / "sn", "--format", "trt", "-o",
        tmp_path / "trt", "--precision", "int8", "--calib", tmp_path / "latents.npy")
    m = json.loads((tmp_path / "trt" / "manifest.json").read_text())
    text = (tmp_path / "trt" / te.TRTEXEC_FILE).read_text()
    lines = [x.split() for x in text.splitlines() if x.startswith("trtexec")]
    by_model = {next(a for a in ln if a.startswith("--onnx=")).split("=", 1)[1]: ln for ln in lines}
    assert "--int8" in by_model[m["model"]] and len(by_model) >= 3
    assert all("--int8" not in ln for name, ln in by_model.items() if name != m["model"])  # no Q/DQ there
    settings = json.loads((tmp_path / "trt" / te.BUILD_SCRIPT).read_text().split('json.loads(r"""')[1].split('""")')[0])
    assert {k for k, v in settings["engines"].items() if v["int8"]} == {m["model"]}
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "trt" / m["model"])).graph.node}
    assert any("only the denoiser is int8" in n for n in m["notes"])
