"""ONNX export: torch.onnx.export (TorchScript exporter), checked, shape-inferred, optionally fp16.

The TorchScript exporter (`dynamo=False`) takes ~1 s for the tiny backbones where the dynamo one takes
5–18 s, matches PyTorch equally well, and stores a Parameter used by many modules as one initializer,
which is what makes shared bases appear once in the file. Files above protobuf's 2 GB limit are saved
with their tensors in one external `.onnx.data` file next to the graph.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf.message import EncodeError
from torch import nn

from fine_deploy.backbones import Adapter
from fine_deploy.errors import FineDeployError
from fine_deploy.export.io_names import OUTPUT_NAME, ExportWrapper

MIN_OPSET = 17
MAX_OPSET = 20  # the TorchScript exporter's newest
PROTOBUF_LIMIT = 2**31 - 1
# fp16 conversion keeps these in fp32: their reductions overflow or lose the mean in fp16
FP16_KEEP_FP32 = ["InstanceNormalization", "GroupNormalization", "LayerNormalization", "ReduceMean", "Pow", "Sqrt"]


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise FineDeployError(f"--opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    return opset


def _to_model(model: nn.Module, inputs: dict[str, torch.Tensor], opset: int, dynamic_batch: bool, tmp: Path,
              adapter: Adapter | None, outputs: list[str]):
    import onnx

    names = list(inputs)
    axes = {n: {0: "batch"} for n in [*names, *outputs]} if dynamic_batch else None
    graph = ExportWrapper(model, names, adapter).eval() if adapter is not None else model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape asserts inside diffusers
        torch.onnx.export(
            graph,
            tuple(inputs.values()),
            str(tmp),
            input_names=names,
            output_names=outputs,
            opset_version=opset,
            dynamic_axes=axes,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load(str(tmp))  # loads external data too, if the exporter wrote any


def _toposort(graph: Any) -> None:
    """Reorder the nodes so each comes after the producers of its inputs (Kahn's algorithm)."""
    nodes = list(graph.node)
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    order, pending = [], nodes
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError(f"ONNX graph has a cycle or a dangling input at {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(order)


def export_onnx(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    path: str | Path,
    *,
    adapter: Adapter | None,
    opset: int = MIN_OPSET,
    dynamic_batch: bool = False,
    fp16: bool = False,
    external_data_threshold: int = PROTOBUF_LIMIT,
    output_names: tuple[str, ...] = (OUTPUT_NAME,),
    fp16_keep_fp32: Callable[[Any], list[str]] | None = None,
) -> list[Path]:
    """Write `path` (and `path`.data when larger than the threshold); return the files written. With `fp16`,
    `fp16_keep_fp32` names (given the traced graph) the nodes to keep in fp32.

    With an `adapter`, `model` is a backbone fed by its named inputs; without, `model` is already the graph
    (a pipeline component's) whose positional inputs are `inputs` and outputs `output_names`."""
    import onnx

    check_opset(opset)
    path = Path(path)
    # a folder of its own: above 2 GB the exporter writes one external file per tensor beside the graph
    trace_dir = path.with_name(f".{path.name}.trace")
    trace_dir.mkdir(parents=True, exist_ok=True)
    limit = min(external_data_threshold, PROTOBUF_LIMIT)
    try:
        try:
            proto = _to_model(model, inputs, opset, dynamic_batch, trace_dir / "model.onnx", adapter,
                              list(output_names))
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as e:  # unsupported op at this opset
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FineDeployError(f"torch.onnx.export failed at opset {opset}: {first}; try another --opset") from None
        if fp16:
            keep = fp16_keep_fp32(proto) if fp16_keep_fp32 is not None else None
            proto = _to_fp16(proto, trace_dir, large=_initializer_bytes(proto) > limit, keep=keep)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    proto.producer_name = "fine-deploy"
    if _initializer_bytes(proto) <= limit:
        try:
            # the fp16 converter already wrote value_info (strict re-inference trips on its Cast nodes)
            small = onnx.shape_inference.infer_shapes(proto, strict_mode=not fp16, data_prop=not fp16)
            onnx.checker.check_model(small, full_check=True)
            onnx.save_model(small, str(path))
            return [path]
        except (ValueError, EncodeError):
            # protobuf refused to serialise the whole message (over 2 GB after all, e.g. large Constant nodes):
            # the same model goes out with its tensors beside the graph instead of as a traceback
            path.unlink(missing_ok=True)
    data = f"{path.name}.data"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    # path-based checks: they read the external data from disk and never serialise the 2 GB message
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(path), strict_mode=not fp16)
    return [path, path.with_name(data)]


def _initializer_bytes(proto: Any) -> int:
    """Size of a model counted from its tensors, not ByteSize(): protobuf refuses to size (or serialise) a
    message over 2 GB; + 1 MiB for the graph itself."""
    return sum(len(t.raw_data) or 4 * len(t.float_data) for t in proto.graph.initializer) + (1 << 20)


def _to_fp16(proto: Any, work: Path, *, large: bool, keep: list[str] | None = None) -> Any:
    """fp16 weights, fp32 inputs/outputs. The converter's shape inference serialises the whole model when
    handed a ModelProto, which fails above 2 GB (`EncodeError: Failed to serialize proto`); a large model is
    therefore written with external data first and converted from its path (inference on the file)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if large:
        fp32 = work / "fp32.onnx"
        onnx.save_model(proto, str(fp32), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="fp32.onnx.data", size_threshold=1024)
        del proto
        proto = convert_float_to_float16(str(fp32), keep_io_types=True, op_block_list=FP16_KEEP_FP32,
                                         node_block_list=keep)
    else:
        proto = convert_float_to_float16(proto, keep_io_types=True, op_block_list=FP16_KEEP_FP32,
                                         node_block_list=keep)
    _toposort(proto.graph)  # the converter appends its input casts at the end of the node list
    return proto


def initializer_stats(path: str | Path) -> dict[str, Any]:
    """Initializer count and bytes of an ONNX file, and bytes stored more than once (same content)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    by_hash: dict[str, int] = {}
    count = total = dup = 0
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        n = arr.nbytes
        count += 1
        total += n
        h = hashlib.sha256(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()
        if h in by_hash and n >= 64:  # tiny shape constants repeat legitimately
            dup += n
        by_hash.setdefault(h, n)
    return {"count": count, "bytes": total, "duplicate_bytes": dup}


def run_onnx(path: str | Path, feeds: dict[str, np.ndarray], threads: int = 1) -> tuple[np.ndarray, dict]:
    """Run an ONNX file once on ONNX Runtime CPU through the shared runtime layer."""
    out, desc = run_onnx_outputs(path, feeds, threads)
    return out[OUTPUT_NAME], desc


def run_onnx_outputs(path: str | Path, feeds: dict[str, np.ndarray], threads: int = 1) -> tuple[dict, dict]:
    """Every output of an ONNX file run once on ONNX Runtime CPU."""
    from fine_deploy.runtime import SessionOptions, open_session

    with open_session(path, SessionOptions(threads=threads), "onnxruntime-cpu") as s:
        return s.run(feeds), s.describe()
