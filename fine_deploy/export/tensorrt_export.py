"""The TensorRT-ready bundle: an ONNX file checked against what TensorRT accepts, the exact `trtexec`
line and a standalone build script using the tensorrt Python API.

Engines are tied to one GPU and one TensorRT version, so the engine is normally built on the target
(the Jetson itself) from the bundle. Where tensorrt imports and an NVIDIA GPU is visible, `export`
also runs the bundle's own build script here and checks the engine against PyTorch.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fine_deploy.errors import FineDeployError
from fine_deploy.export.trt_ops import OPSET_RANGE, SUPPORTED_DTYPES, SUPPORTED_OPS, TRT_VERSION

BUILD_SCRIPT = "build_engine.py"
TRTEXEC_FILE = "trtexec.sh"
ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"
INT32 = (-(2**31), 2**31 - 1)


@dataclass
class TrtCheck:
    opset: int
    ops: dict[str, int]  # op type -> node count
    unsupported: dict[str, list[str]] = field(default_factory=dict)  # op type -> first node names
    problems: list[str] = field(default_factory=list)
    dynamic_inputs: list[str] = field(default_factory=list)
    int64_cast: list[str] = field(default_factory=list)  # int64 weights TensorRT casts to int32 safely
    target: str = f"TensorRT {TRT_VERSION}"

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_onnx_for_tensorrt(path: str | Path, *, profile: bool = False) -> TrtCheck:
    """What in an ONNX file TensorRT would refuse: ops, opset, dtypes, int64 weights out of int32
    range, dynamic inputs without an optimisation profile."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path), load_external_data=True)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in proto.graph.node)
    chk = TrtCheck(opset, dict(sorted(ops.items())))
    lo, hi = OPSET_RANGE
    if not lo <= opset <= hi:
        chk.problems.append(
            f"opset {opset} is outside TensorRT {TRT_VERSION}'s {lo}..{hi}; re-export with --opset {hi}"
        )
    for n in proto.graph.node:
        name = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS:
            chk.unsupported.setdefault(name, [])
            if len(chk.unsupported[name]) < 3:
                chk.unsupported[name].append(n.name or "<unnamed>")
    for op, nodes in chk.unsupported.items():
        chk.problems.append(f"op {op} ({ops[op]} node(s), e.g. {nodes[0]}) is not supported by TensorRT {TRT_VERSION}")
    consumers: dict[str, set[str]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.op_type)
    for init in proto.graph.initializer:
        if init.data_type not in SUPPORTED_DTYPES:
            chk.problems.append(f"weight {init.name} has ONNX type {init.data_type}, which TensorRT cannot load")
        elif init.data_type == 7:  # int64: cast to int32 by older parsers, clamped at ±INT_MAX
            arr = numpy_helper.to_array(init)
            if arr.size and (arr.min() < INT32[0] or arr.max() > INT32[1]):
                # Slice starts/ends use INT64_MAX for "to the end": clamping keeps their meaning
                if consumers.get(init.name, set()) - {"Slice"}:
                    chk.problems.append(f"int64 weight {init.name} holds values beyond int32 that TensorRT would clamp")
                    continue
            chk.int64_cast.append(init.name)
    for vi in [*proto.graph.input, *proto.graph.output]:
        t = vi.type.tensor_type
        if t.elem_type not in SUPPORTED_DTYPES or t.elem_type == 11:
            chk.problems.append(
                f"graph I/O {vi.name} has ONNX type {t.elem_type}; TensorRT I/O must be float/int32/int64/bool"
            )
    for vi in proto.graph.input:
        if any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim):
            chk.dynamic_inputs.append(vi.name)
    if chk.dynamic_inputs and not profile:
        chk.problems.append(f"inputs {', '.join(chk.dynamic_inputs)} are dynamic and no optimisation profile is given")
    return chk


def require_compatible(chk: TrtCheck, name: str) -> None:
    if not chk.ok:
        raise FineDeployError(f"{name} is not TensorRT-ready: {chk.problems[0]}"
                              + (f" (+{len(chk.problems) - 1} more)" if len(chk.problems) > 1 else ""))


def profile_shapes(
    shapes: dict[str, list[int]], dynamic_batch: bool, max_batch: int
) -> dict[str, dict[str, list[int]]]:
    """min/opt/max per input: the export shape, or batch 1..max_batch around it when dynamic."""
    out = {}
    for name, shape in shapes.items():
        if dynamic_batch:
            out[name] = {"min": [1, *shape[1:]], "opt": list(shape), "max": [max_batch, *shape[1:]]}
        else:
            out[name] = {"min": list(shape), "opt": list(shape), "max": list(shape)}
    return out


def _spec(profile: dict[str, dict[str, list[int]]], key: str) -> str:
    return ",".join(f"{n}:{'x'.join(map(str, p[key]))}" for n, p in profile.items())


def engine_name(onnx_name: str) -> str:
    """The engine built from an ONNX file sits beside it: model.onnx -> model.engine, unet/model.onnx ->
    unet/model.engine."""
    return str(Path(onnx_name).with_name(ENGINE).as_posix())


def precision_flags(precisions: str | set[str]) -> dict[str, bool]:
    """TensorRT builder flags for the precisions of an artifact. int8 is explicit quantization: the ONNX
    carries the Q/DQ nodes and their scales and `--int8` lets TensorRT run them in int8; an all-int8 artifact
    adds `--fp16` so the layers left unquantised (norms, softmax) pick fp16 kernels, as NVIDIA's Q/DQ guide
    builds them, while int8 beside fp32 layers leaves it off so those stay fp32."""
    kinds = {precisions} if isinstance(precisions, str) else set(precisions)
    bad = sorted(kinds - {"fp32", "fp16", "bf16", "int8"})
    if bad:
        raise FineDeployError(f"no TensorRT builder flags for {bad[0]}; use fp32, fp16, bf16 or int8")
    return {"fp16": "fp16" in kinds or kinds == {"int8"}, "bf16": "bf16" in kinds, "int8": "int8" in kinds}


def trtexec_command(onnx_name: str, profile: dict[str, dict[str, list[int]]], *, dynamic: bool, fp16: bool,
                    int8: bool = False, bf16: bool = False, workspace_mib: int = 4096) -> list[str]:
    cmd = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name(onnx_name)}",
           f"--timingCacheFile={TIMING_CACHE}",
           f"--memPoolSize=workspace:{workspace_mib}"]
    if dynamic:
        cmd += [f"--minShapes={_spec(profile, 'min')}", f"--optShapes={_spec(profile, 'opt')}",
                f"--maxShapes={_spec(profile, 'max')}"]
    if fp16:
        cmd.append("--fp16")
    if bf16:
        cmd.append("--bf16")
    if int8:
        cmd.append("--int8")
    return cmd


_SCRIPT = '''#!/usr/bin/env python3
"""Build the TensorRT engine of every ONNX model of this bundle on THIS machine (written by fine-deploy export).

TensorRT engines only run on the GPU model and TensorRT version that built them, so run this on the
target device:  python3 build_engine.py  [--only unet/model.onnx] [--fp16/--no-fp16] [--bf16/--no-bf16]
                [--int8/--no-int8] [--workspace-mib N]
Each engine is written beside its ONNX file (model.onnx -> model.engine). Needs only the tensorrt Python
package (JetPack ships it).
"""
import argparse
import json
import sys
from pathlib import Path

import tensorrt as trt

HERE = Path(__file__).resolve().parent
SETTINGS = json.loads(r"""__SETTINGS__""")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(SETTINGS["engines"]), help="build one model's engine")
    ap.add_argument("--timing-cache", default=str(HERE / "__CACHE__"))
    ap.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=SETTINGS["fp16"])
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=SETTINGS["bf16"])
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=SETTINGS["int8"],
                    help="explicit quantization: runs the ONNX's Q/DQ nodes in int8 (no calibrator here)")
    ap.add_argument("--workspace-mib", type=int, default=SETTINGS["workspace_mib"])
    args = ap.parse_args()
    for onnx_name, spec in sorted(SETTINGS["engines"].items()):
        if args.only in (None, onnx_name):
            rc = build(args, str(HERE / onnx_name), str(HERE / spec["engine"]), spec["profile"],
                       int8=args.int8 and spec.get("int8", True))
            if rc:
                return rc
    return 0


def build(args, onnx_path, engine_path, shapes, int8):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        for i in range(parser.num_errors):
            print(f"build_engine: parse error: {parser.get_error(i)}", file=sys.stderr)
        return 1
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mib << 20)
    if args.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if args.bf16:
        config.set_flag(trt.BuilderFlag.BF16)
    if int8:  # only graphs with Q/DQ nodes: without them TensorRT would need a calibrator's ranges
        config.set_flag(trt.BuilderFlag.INT8)
    cache_path = Path(args.timing_cache)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for t in dynamic:
            p = shapes[t.name]
            profile.set_shape(t.name, p["min"], p["opt"], p["max"])
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        print("build_engine: TensorRT could not build the engine; see its log above", file=sys.stderr)
        return 1
    tmp = Path(engine_path + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    print(f"build_engine: wrote {engine_path} (TensorRT {trt.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def build_script(profiles: dict[str, dict[str, dict[str, list[int]]]], *, fp16: bool, int8: bool = False,
                 bf16: bool = False, workspace_mib: int = 4096, int8_models: set[str] | None = None) -> str:
    """The bundle's build script: one engine per ONNX file (`profiles`: ONNX path -> its inputs' shapes);
    with `int8`, the INT8 flag goes to the graphs in `int8_models` (all when None), those with Q/DQ nodes."""
    engines = {name: {"engine": engine_name(name), "profile": p,
                      "int8": int8 and (int8_models is None or name in int8_models)} for name, p in profiles.items()}
    settings = {"engines": engines, "fp16": fp16, "bf16": bf16, "int8": int8, "workspace_mib": workspace_mib}
    return _SCRIPT.replace("__SETTINGS__", json.dumps(settings, indent=2, sort_keys=True)).replace(
        "__CACHE__", TIMING_CACHE)


def trtexec_script(cmds: list[list[str]]) -> str:
    return ("#!/bin/sh\n# Build the TensorRT engines on the target device (engines are tied to its GPU and\n"
            "# TensorRT version). Written by fine-deploy export.\nset -e\ncd \"$(dirname \"$0\")\"\n"
            + "".join(" ".join(shlex.quote(c) for c in cmd) + "\n" for cmd in cmds))


def engine_available() -> bool:
    """tensorrt importable and an NVIDIA GPU visible (checked without importing tensorrt)."""
    from fine_deploy.runtime.backends import available_backends

    return available_backends()["tensorrt"]


def build_engine_here(directory: Path, timeout_s: int = 3600) -> Path:
    """Run the bundle's own build script (the code the device will run) to make its engines here; returns the
    bundle directory (each engine lies beside its ONNX file, see `engine_name`)."""
    r = subprocess.run([sys.executable, str(directory / BUILD_SCRIPT)], capture_output=True, text=True,
                       timeout=timeout_s)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise FineDeployError(
            f"TensorRT engine build failed: {last}; the bundle itself is fine, build it on the device"
        )
    return directory
