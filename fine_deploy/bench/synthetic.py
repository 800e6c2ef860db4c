"""Tiny real ONNX models of known cost, for tests, the regression detector and the CI check."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fine_deploy.fileio import atomic_write_bytes


def matmul_chain_model(depth: int, size: int = 256, rows: int | None = None, seed: int = 0) -> bytes:
    """Serialized ONNX graph ``y = x·W1·W2·…·W_depth`` with ``size``×``size`` weights.

    Work grows linearly with ``depth``, so depth 11 against 10 is a +10% regression of known size.
    ``rows=None`` leaves the leading dim dynamic (named ``batch``). Weights are scaled by
    1/sqrt(size) so activations stay O(1): denormals or infs would change the kernels' speed.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    lead: int | str = rows if rows is not None else "batch"
    nodes, inits = [], []
    prev = "x"
    for i in range(depth):
        w = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"matmul{i}"))
        prev = out
    graph = helper.make_graph(
        nodes,
        f"matmul_chain_{depth}x{size}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [lead, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [lead, size])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fine-deploy")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_matmul_chain(path: str | Path, depth: int, size: int = 256, rows: int | None = None, seed: int = 0) -> Path:
    """Write ``matmul_chain_model`` atomically to ``path`` (a ``.onnx`` file)."""
    return atomic_write_bytes(path, matmul_chain_model(depth, size, rows, seed))
