"""TensorRT bundle + compatibility check (CPU), engine (GPU + tensorrt only), Core ML package checks."""

from __future__ import annotations

import json
import py_compile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_export import half_ranks, make_plan, mixed_kernels

from fine_deploy.errors import FineDeployError
from fine_deploy.export import export, uniform_kernels
from fine_deploy.export import tensorrt_export as te
from fine_deploy.export.manifest import MANIFEST
from fine_deploy.supernet.core import load_supernet


def _graph(op: str, extra_init=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    node = helper.make_node(op, ["x"], ["y"], name=f"the_{op.lower()}")
    inits = [extra_init] if extra_init is not None else []
    return helper.make_model(helper.make_graph([node], "g", [x], [y], initializer=inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_trt_check_rejects_an_op_tensorrt_lacks_by_name(tmp_path):
    path = tmp_path / "u.onnx"
    onnx.save(_graph("Unique"), str(path))
    chk = te.check_onnx_for_tensorrt(path)
    assert not chk.ok and "Unique" in chk.unsupported and chk.unsupported["Unique"] == ["the_unique"]
    with pytest.raises(FineDeployError, match=r"op Unique \(1 node\(s\), e.g. the_unique\) is not supported"):
        te.require_compatible(chk, "u.onnx")
    onnx.save(_graph("Relu"), str(path))
    assert te.check_onnx_for_tensorrt(path).ok


def test_trt_check_rejects_int64_weights_beyond_int32(tmp_path):
    big = numpy_helper.from_array(np.array([2**40], dtype=np.int64), "big")
    model = _graph("Relu", big)
    model.graph.node.append(helper.make_node("Add", ["big", "big"], ["z"], name="uses_big"))
    path = tmp_path / "i.onnx"
    onnx.save(model, str(path))
    chk = te.check_onnx_for_tensorrt(path)
    assert any("int64 weight big" in p for p in chk.problems)


def test_trt_bundle_on_cpu(dit_supernet, tmp_path):
    sn = load_supernet(dit_supernet)
    cfg = {"ranks": half_ranks(sn), "depth": 2}
    out = tmp_path / "trt"
    m = export(make_plan(dit_supernet, cfg, mixed_kernels(sn, cfg)), "trt", out, dynamic_batch=True, fp16=True)
    chk = m.checks["tensorrt"]
    assert chk["ok"] and chk["dynamic_inputs"] == ["hidden_states", "timestep", "class_labels"]
    assert chk["profile"]["hidden_states"] == {"min": [1, 4, 8, 8], "opt": [1, 4, 8, 8], "max": [2, 4, 8, 8]}
    cmd = (out / te.TRTEXEC_FILE).read_text()
    assert "--onnx=model.onnx" in cmd and "--fp16" in cmd and "--minShapes=hidden_states:1x4x8x8" in cmd
    py_compile.compile(str(out / te.BUILD_SCRIPT), doraise=True)
    assert '"fp16": true' in (out / te.BUILD_SCRIPT).read_text()
    saved = json.loads((out / MANIFEST).read_text())
    assert saved["format"] == "trt" and set(saved["files"]) >= {"model.onnx", te.BUILD_SCRIPT, te.TRTEXEC_FILE}
    if not te.engine_available():
        assert saved["model"] == "model.onnx" and "build the engine on the target device" in saved["notes"][-1]
    onnx_parity = [p for p in m.parity if p["runtime"] == "onnxruntime-cpu"]
    assert onnx_parity and all(p["rel"] <= 1e-5 for p in onnx_parity)  # fp16 is a builder flag: ONNX stays fp32


@pytest.mark.skipif(not te.engine_available(), reason="needs the tensorrt package and an NVIDIA GPU")
def test_trt_engine_builds_and_matches(dit_supernet, tmp_path):
    sn = load_supernet(dit_supernet)
    cfg = {"ranks": half_ranks(sn)}
    m = export(make_plan(dit_supernet, cfg, uniform_kernels(sn, cfg, "shared_basis")), "trt", tmp_path / "e")
    assert m.model == te.ENGINE and (tmp_path / "e" / te.ENGINE).is_file()
    trt = next(p for p in m.parity if p["runtime"] == "tensorrt")
    assert trt["passed"] and trt["rel"] <= 1e-3


def test_coreml_package_holds_the_folded_weights(dit_supernet, tmp_path):
    pytest.importorskip("coremltools")
    sn = load_supernet(dit_supernet)
    cfg = {"ranks": half_ranks(sn), "depth": 2}
    out = tmp_path / "cm"
    m = export(make_plan(dit_supernet, cfg, mixed_kernels(sn, cfg)), "coreml", out)
    chk = m.checks["coreml"]
    assert chk["inputs"] == {"hidden_states": [1, 4, 8, 8], "timestep": [1], "class_labels": [1]}
    assert chk["outputs"] == ["out_sample"] and chk["weights_checked"] >= 20
    assert chk["weights_max_rel_diff"] <= 1e-7
    assert (out / "model.mlpackage" / "Manifest.json").is_file() and m.model == "model.mlpackage"
    with pytest.raises(FineDeployError, match="--dynamic-batch is not offered for Core ML"):
        export(make_plan(dit_supernet, cfg, {}), "coreml", tmp_path / "x", dynamic_batch=True)
