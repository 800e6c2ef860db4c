"""Core ML export: an ML program `.mlpackage` through coremltools' torch.export route.

The torch.jit.trace route fails with numpy 2.x; torch.export converts the tiny UNet and DiT. Shapes
are fixed (flexible shapes run far slower on the Neural Engine) and inputs/outputs carry explicit
names. On Linux the package is checked without loading the model (`skip_model_load`): its interface,
and that every weight it holds equals the folded weight; on macOS predictions are compared too.

Palettised weights (pal8/pal6/pal4) go through `coremltools.optimize.coreml.palettize_weights` (k-means,
one look-up table per tensor, tensors of at least 2048 elements as coremltools defaults) after an fp16
conversion; the package then stores those tensors as `constexpr_lut_to_dense` ops, which the check counts.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fine_deploy.backbones import Adapter
from fine_deploy.errors import FineDeployError
from fine_deploy.export.io_names import OUTPUT_NAME, ExportWrapper

TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")


def _ct():
    try:
        import coremltools as ct
    except ImportError:
        raise FineDeployError("--format coreml needs coremltools; pip install 'fine-deploy[coreml]'") from None
    return ct


def export_coreml(model: nn.Module, inputs: dict[str, torch.Tensor], path: Path, *, adapter: Adapter | None,
                  fp16: bool, deployment_target: str = "iOS16", output_names: tuple[str, ...] = (OUTPUT_NAME,),
                  palette_bits: int | None = None) -> Any:
    """With an `adapter`, `model` is a backbone fed by its named inputs; without, `model` is already the graph
    (a pipeline component's) with positional `inputs` and outputs `output_names`. `palette_bits` palettises
    the weights (k-means look-up tables of 2^bits entries)."""
    if deployment_target not in TARGETS:
        raise FineDeployError(f"deployment target {deployment_target!r} is unknown; use one of {', '.join(TARGETS)}")
    ct = _ct()
    wrapper = (ExportWrapper(model, list(inputs), adapter) if adapter is not None else model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(wrapper, tuple(inputs.values())).run_decompositions({})
        except Exception as e:  # torch.export raises many types for untraceable code
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FineDeployError(f"torch.export could not capture the model for Core ML: {first}") from None
        _drop_aliases(program)
        ct_inputs = [
            ct.TensorType(name=k, shape=tuple(v.shape), dtype=np.float32 if v.is_floating_point() else np.int32)
            for k, v in inputs.items()
        ]
        try:
            mlmodel = _convert(ct, program, ct_inputs, output_names, fp16, deployment_target)
        except (NotImplementedError, ValueError, RuntimeError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FineDeployError(f"coremltools could not convert the model: {first}") from None
        if palette_bits is not None:
            mlmodel = palettize(mlmodel, palette_bits)
    mlmodel.save(str(path))
    return mlmodel


def palettize(mlmodel: Any, nbits: int) -> Any:
    """k-means palettisation of every weight tensor coremltools' default size threshold selects."""
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=nbits))
    try:
        return cto.palettize_weights(mlmodel, config)
    except (ValueError, RuntimeError, TypeError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FineDeployError(f"coremltools could not palettise the weights to {nbits} bits: {first}") from None


def _drop_aliases(program: Any) -> None:
    """aten.alias is a no-op view that coremltools' torch.export frontend does not know (transformers' CLIP
    slices its position_ids buffer into one): its users read its input instead."""
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and str(node.target).startswith("aten.alias"):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()


def _convert(ct: Any, program: Any, ct_inputs: list, output_names: tuple[str, ...], fp16: bool, target: str) -> Any:
    return ct.convert(
            program,
            inputs=ct_inputs,
            outputs=[ct.TensorType(name=n) for n in output_names],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, target),
            skip_model_load=True,
        )


def check_package(path: Path, model: nn.Module, inputs: dict[str, torch.Tensor], *, fp16: bool,
                  output_names: tuple[str, ...] = (OUTPUT_NAME,), palette_bits: int | None = None) -> dict[str, Any]:
    """Load the package spec without compiling it; check names, shapes and that weights equal `model`'s (the
    folded subnet, or the part of a component the graph uses). With `palette_bits`, a weight stored as a
    look-up table is matched by size to a `constexpr_lut_to_dense` op of that many index bits instead."""
    ct = _ct()
    loaded = ct.models.MLModel(str(path), skip_model_load=True)
    desc = loaded.get_spec().description
    got_in = {f.name: [int(d) for d in f.type.multiArrayType.shape] for f in desc.input}
    want_in = {k: list(v.shape) for k, v in inputs.items()}
    if got_in != want_in or [f.name for f in desc.output] != list(output_names):
        raise FineDeployError(f"Core ML package has inputs {got_in} / outputs {[f.name for f in desc.output]}, "
                              f"expected {want_in} / {list(output_names)}; re-export")
    consts, luts = _consts(loaded)
    if palette_bits is not None and not luts:
        raise FineDeployError("the Core ML package holds no palettised (constexpr_lut_to_dense) weights; re-export")
    lut_sizes = Counter(size for size, _ in luts)
    rtol = 1e-3 if fp16 else 0.0
    by_size: dict[int, list[np.ndarray]] = {}
    for v in consts.values():
        by_size.setdefault(v.size, []).append(v.astype(np.float64))
    checked, worst, missing, uniform, palettised = 0, 0.0, [], 0, 0
    for name, p in model.named_parameters():  # yields a shared Parameter once
        want = p.detach().double().numpy()
        if want.size > 1 and np.all(want == want.flat[0]):
            uniform += 1  # a scale of ones / shift of zeros: the converter may fold it into its neighbour op
            continue
        # the converter renames weights and stores matmul weights transposed (as `linear` takes them)
        views = [want] + ([want.T] if want.ndim == 2 else [])
        scale = float(np.abs(want).max()) or 1.0
        best = min((float(np.abs(g.reshape(w.shape) - w).max()) / scale
                    for g in by_size.get(want.size, []) for w in views), default=None)
        if (best is None or best > max(rtol, 1e-6)) and lut_sizes.get(want.size, 0) > 0:
            lut_sizes[want.size] -= 1  # stored palettised: its values are the palette's, not the weight's
            palettised += 1
            continue
        if best is None or best > max(rtol, 1e-6):
            missing.append(name)
            continue
        worst = max(worst, best)
        checked += 1
    if missing or worst > max(rtol, 1e-6):
        what = (f"{len(missing)} weights are missing (e.g. {missing[0]})" if missing
                else f"weights differ by {worst:.1e}")
        raise FineDeployError(f"Core ML package does not hold the folded weights: {what}; re-export")
    out = {"inputs": got_in, "outputs": list(output_names), "weights_checked": checked,
           "uniform_weights_not_matched": uniform, "weights_max_rel_diff": worst, "consts": len(consts)}
    if luts:
        bits = sorted({b for _, b in luts})
        if palette_bits is not None and bits != [palette_bits]:
            raise FineDeployError(f"Core ML package palettes use {bits} index bits, not the {palette_bits} asked; "
                                  "re-export")
        out.update(palettised_ops=len(luts), palettised_weights=palettised, palette_bits=bits,
                   palettised_elements=int(sum(size for size, _ in luts)))
    return out


def _consts(mlmodel: Any) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
    """Every constant array of the package's ML program (what get_weights_metadata lists, without its crash on
    ops whose inputs are lists, e.g. a concat of CLIP's hidden states), and (elements, index bits) of every
    palettised weight."""
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.models import utils as model_utils

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = model_utils._convert_model_spec_to_pymil_prog(mlmodel, mlmodel.get_spec().specificationVersion,
                                                             milproto.load)
    out: dict[str, np.ndarray] = {}
    luts: list[tuple[int, int]] = []

    def walk(block: Any) -> None:
        for op in block.operations:
            for b in op.blocks:
                walk(b)
            if op.op_type == "const" and isinstance(getattr(op.val, "val", None), np.ndarray) and op.val.val.size > 1:
                out[op.name] = np.asarray(op.val.val)
            elif op.op_type == "constexpr_lut_to_dense":
                luts.append(_lut_shape(op))

    for fn in prog.functions.values():
        walk(fn)
    return out, luts


def _lut_shape(op: Any) -> tuple[int, int]:
    """(dense elements, index bits) of a constexpr_lut_to_dense op (iOS16: lut [2^n], iOS18: lut [..., 2^n, 1])."""
    dense = int(np.prod(op.outputs[0].shape))
    lut = op.inputs["lut"].val
    entries = lut.shape[-2] if lut.ndim > 1 and lut.shape[-1] == 1 else lut.shape[-1]
    return dense, int(round(np.log2(entries)))


def predict(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
    """Core ML prediction (macOS only); None elsewhere."""
    out = predict_all(path, feeds)
    return None if out is None else out[OUTPUT_NAME]


def predict_all(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    if sys.platform != "darwin":
        return None
    ct = _ct()
    return {k: np.asarray(v) for k, v in ct.models.MLModel(str(path)).predict(feeds).items()}
