"""Inject a real slowdown into an exported ONNX model: extra layers, for proving a latency gate can fail.

Every ``every``-th MatMul / Gemm / Conv node gets a twin (same inputs, same weights) whose output is
added back scaled by a tiny constant: ``y = op(x) + 1e-12 · op(x)``. The twin does the same work as the
layer it copies, so the model does measurably more work, and since its output feeds the result, ONNX
Runtime cannot remove it as dead code (a zero scale could be folded away; 1e-12 leaves the outputs equal
to float precision). An export directory is copied whole with its model file replaced, so ``bench``
still finds the manifest's input shapes and ranges.

    python -m fine_deploy.bench.slowdown EXPORT_DIR SLOW_DIR [--every 4]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_bytes

HEAVY = ("MatMul", "Gemm", "Conv")
SCALE = 1e-12


def slow_model_bytes(model_bytes: bytes, every: int = 4) -> tuple[bytes, int]:
    """The model with a twin of every ``every``-th heavy node; returns (bytes, twins added)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    if every < 1:
        raise FineDeployError("--every must be >= 1 (1: every heavy node gets a twin)")
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    heavy = [n for n in graph.node if n.op_type in HEAVY]
    chosen = heavy[every - 1 :: every]
    if not chosen:
        raise FineDeployError(f"the model has {len(heavy)} MatMul/Gemm/Conv node(s); none to copy at --every {every}")
    graph.initializer.append(numpy_helper.from_array(np.array(SCALE, dtype=np.float32), "fd_slowdown_scale"))
    new_nodes = []
    for node in graph.node:
        if node not in chosen:
            new_nodes.append(node)
            continue
        out = node.output[0]
        orig, twin, scaled = f"{out}__fd_orig", f"{out}__fd_twin", f"{out}__fd_scaled"
        first = onnx.NodeProto()
        first.CopyFrom(node)
        first.output[0] = orig
        second = onnx.NodeProto()
        second.CopyFrom(node)
        second.name = f"{node.name}__fd_twin"
        second.output[0] = twin
        new_nodes += [
            first,
            second,
            helper.make_node("Mul", [twin, "fd_slowdown_scale"], [scaled], name=f"{node.name}__fd_scale"),
            helper.make_node("Add", [orig, scaled], [out], name=f"{node.name}__fd_add"),
        ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    return model.SerializeToString(), len(chosen)


def slow_copy(src: str | Path, dst: str | Path, every: int = 4) -> tuple[Path, int]:
    """Copy an export directory (or a model file) to ``dst`` with its model slowed by ``slow_model_bytes``."""
    from fine_deploy.runtime import resolve_artifact

    src, dst = Path(src), Path(dst)
    artifact = resolve_artifact(src)
    if artifact.format != "onnx":
        raise FineDeployError(f"{src} is a {artifact.format} artifact; slowdowns are injected into ONNX models")
    data, twins = slow_model_bytes(artifact.model.read_bytes(), every)
    if src.is_dir():
        if dst.exists():
            raise FineDeployError(f"{dst} exists; give a new folder")
        shutil.copytree(src, dst)
        target = dst / artifact.model.resolve().relative_to(src.resolve())
    else:
        target = dst
    atomic_write_bytes(target, data)
    return target, twins


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--every", type=int, default=4, help="copy every N-th MatMul/Gemm/Conv (default 4)")
    args = ap.parse_args(argv)
    try:
        target, twins = slow_copy(args.src, args.dst, args.every)
    except FineDeployError as e:
        print(f"fine-deploy: error: {e}", file=sys.stderr)
        return 2
    print(f"{target}: {twins} extra layer(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
