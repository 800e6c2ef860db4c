"""Export at any size: models whose protobuf would pass 2 GB go out with external data, fp32 and fp16.

A real 2 GB model takes minutes and gigabytes, so the tests lower the external-data threshold: the export
then takes exactly the branch a 2 GB model takes (weights beside the graph, path-based checker, shape
inference and fp16 conversion). What makes protobuf fail above 2 GB is serialising the whole message in
memory; `onnx.shape_inference.infer_shapes` on a ModelProto is where the fp16 export died on DiT-XL/2
(`EncodeError: Failed to serialize proto`). The tests make that call fail the way protobuf does, so any
large-model branch that still serialises the whole message fails here as it did on the real model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from google.protobuf.message import EncodeError
from test_export import half_ranks, make_plan

from fine_deploy.export import export
from fine_deploy.export import parity as par
from fine_deploy.export.fold import uniform_kernels
from fine_deploy.supernet.core import load_supernet


def _refuse_in_memory_inference(monkeypatch) -> list[int]:
    """Make in-memory shape inference fail like protobuf's 2 GB limit; returns the count of attempts."""
    import onnxruntime.transformers.float16 as f16

    calls: list[int] = []

    def too_big(model, *a, **k):
        calls.append(1)
        raise EncodeError("Failed to serialize proto")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", too_big)
    monkeypatch.setattr(f16, "infer_shapes", too_big)
    return calls


@pytest.mark.parametrize("fp16", [False, True])
def test_large_export_never_serialises_the_whole_model(fp16, dit_supernet, tmp_path, monkeypatch):
    sn = load_supernet(dit_supernet)
    cfg = {"ranks": half_ranks(sn)}
    plan = make_plan(dit_supernet, cfg, uniform_kernels(sn, cfg, "shared_basis"))
    calls = _refuse_in_memory_inference(monkeypatch)
    m = export(plan, "onnx", tmp_path / "e", fp16=fp16, external_data_threshold=1024)
    assert calls == []  # the large branch checks, infers and converts from files only
    assert m.checks["onnx"]["external_data"] is True and "model.onnx.data" in m.files
    assert (tmp_path / "e" / "model.onnx.data").stat().st_size > 0
    ort = next(p for p in m.parity if p["runtime"] == "onnxruntime-cpu")
    assert ort["rel"] <= (par.FP16_REL_TOL if fp16 else par.FP32_REL_TOL)
    inits = onnx.load(str(tmp_path / "e" / "model.onnx"), load_external_data=False).graph.initializer
    big = [t for t in inits if t.data_location == onnx.TensorProto.EXTERNAL]
    assert big and all(t.data_type == (onnx.TensorProto.FLOAT16 if fp16 else onnx.TensorProto.FLOAT)
                       for t in big if len(t.dims) == 2)


def test_misjudged_size_falls_back_to_external_data(dit_supernet, tmp_path, monkeypatch):
    """A model the size estimate calls small but protobuf refuses is saved with external data, not a traceback."""
    sn = load_supernet(dit_supernet)
    plan = make_plan(dit_supernet, {}, {})
    calls = _refuse_in_memory_inference(monkeypatch)
    m = export(plan, "onnx", tmp_path / "e")
    assert calls == [1] and m.checks["onnx"]["external_data"] is True
    assert np.isfinite(next(p["rel"] for p in m.parity if p["runtime"] == "onnxruntime-cpu"))
    assert sn.types  # the supernet is the conftest DiT
