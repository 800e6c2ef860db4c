"""`export`: SUPERNET + PLAN -> ARTIFACT directory (model + manifest.json), checked against PyTorch.

Everything is written into a temporary sibling directory and renamed into place only after every
check passed, so a crash or a failed parity check leaves no directory that looks complete.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from fine_deploy.backbones.base import Adapter
from fine_deploy.errors import FineDeployError
from fine_deploy.export import parity as par
from fine_deploy.export.fold import FoldedSubnet, fold_subnet
from fine_deploy.export.io_names import OUTPUT_NAME, export_inputs, input_ranges, run_torch
from fine_deploy.export.manifest import FORMATS, MANIFEST, Manifest, tool_versions
from fine_deploy.export.onnx_export import MIN_OPSET, PROTOBUF_LIMIT, check_opset, export_onnx, initializer_stats
from fine_deploy.export.precision import artifact_precision, check_int8_mode, nodes_not_at
from fine_deploy.fileio import atomic_directory, atomic_write_bytes, atomic_write_json
from fine_deploy.planner.schema import Plan, supernet_for_plan
from fine_deploy.supernet.core import SubnetConfig, Supernet

ONNX_NAME = "model.onnx"
COREML_NAME = "model.mlpackage"
FORMS_NOTE = "stock diffusers has no {forms} layers: those {n} layer(s) are folded dense in this export"


def _load_plan(plan: str | Path | Plan) -> Plan:
    return plan if isinstance(plan, Plan) else Plan.load(plan)


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / MANIFEST).exists())):
        raise FineDeployError(
            f"{output} exists and is not a fine-deploy export; choose an empty or new -o directory"
        )


def _tensor_specs(inputs: dict[str, torch.Tensor], ranges: dict[str, list[int]], dynamic: bool) -> list[dict]:
    out = []
    for k, v in inputs.items():
        d = {"name": k, "shape": ["batch", *v.shape[1:]] if dynamic else list(v.shape),
             "dtype": str(v.dtype).replace("torch.", "")}
        if k in ranges:
            d["range"] = ranges[k]
        out.append(d)
    return out


def _feeds(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in inputs.items()}


def export(
    plan: str | Path | Plan,
    format: str,
    output: str | Path,
    *,
    supernet: str | Path | None = None,
    fp16: bool = False,
    dynamic_batch: bool = False,
    opset: int = MIN_OPSET,
    batch: int | None = None,
    resolution: int | None = None,
    deployment_target: str = "iOS16",
    seed: int = 0,
    external_data_threshold: int = PROTOBUF_LIMIT,
    quiet: bool = True,
    against: str | Path | None = None,
    precision: str | None = None,
    calib: str | Path | torch.Tensor | None = None,
    int8_mode: str = "static",
    recipe_calib: Callable[[Supernet, int], torch.Tensor | None] | None = None,
) -> Manifest:
    """Fold the plan's subnet into its kernel forms, write `format` into `output`, check it, return the manifest.

    The artifact's precision is `precision` (--precision), else the plan's `precision` map, else fp32
    (`fp16=True` is `precision="fp16"`). Static int8 calibrates on `calib` (images [N, C, H, W] in [-1, 1],
    or a .npy/.safetensors file of them), else on what `recipe_calib(supernet, resolution)` returns (the
    recipe's data, where the caller can load it). A converted supernet's export is also compared with its
    source model (`export.source_check`): the folder `against`, else the one convert recorded."""
    if format not in FORMATS:
        raise FineDeployError(f"--format {format!r} is unknown; use one of {', '.join(FORMATS)}")
    check_opset(opset)
    if batch is not None and batch < 1:
        raise FineDeployError(f"--batch {batch} must be >= 1")
    if dynamic_batch and format == "coreml":
        raise FineDeployError("--dynamic-batch is not offered for Core ML (flexible shapes run far slower on the "
                              "Neural Engine); export one package per batch size")
    output = Path(output)
    _check_output(output)
    from fine_deploy.validate import output_dir

    output_dir(output)
    if fp16 and precision not in (None, "fp16"):
        raise FineDeployError(f"--fp16 and --precision {precision} disagree; pass one of them")
    override = "fp16" if fp16 else precision
    p = _load_plan(plan)
    sn = supernet_for_plan(p, supernet)
    config = sn.validate(SubnetConfig.from_json(p.subnet))
    choice = artifact_precision(p, sn, config, format, override)
    check_int8_mode(int8_mode, format, choice)
    prec = choice.lowest  # the parity bound of the whole artifact is its lowest precision's
    fp16 = choice.kinds == {"fp16"}
    int8 = "int8" in choice.kinds
    batch = int(batch or p.inputs.get("batch") or 1)
    ad = sn.adapter
    pipeline = bool(sn.components)
    if pipeline:
        sn.check_components()  # every carried file intact before any work
    res = ad.check_resolution(sn.spec.config, resolution if resolution is not None else p.inputs.get("resolution"))
    inputs = export_inputs(ad, sn.spec.config, batch, res, seed, sn.text_tokens)
    meta = {"batch": batch, "resolution": res, "seed": seed}
    images = None
    if int8:  # calibration data found and checked before any heavy work (dynamic int8 only measures on it)
        from fine_deploy.export.quantize import check_calibration

        try:
            images = _calibration_images(sn, calib, recipe_calib, res)
            check_calibration(images, inputs[ad.sample_input], ad.sample_input)
        except FineDeployError:
            if int8_mode == "static" or calib is not None:
                raise
            images = None  # dynamic int8 needs none: it is then measured on the parity input only
    from fine_deploy.export.source_check import check_against_source, find_source

    source, skipped = find_source(sn, against)

    with Progress(transient=True) as progress:
        task = progress.add_task(f"export {format}", total=4)
        step = lambda what: progress.update(task, advance=1, description=f"export {format}: {what}")  # noqa: E731
        kernels = p.kernels if format != "diffusers" else {}
        folded = fold_subnet(sn, config, kernels)
        forms_asked = {k: v for k, v in p.kernels.items() if v != "dense"}
        ref = run_torch(folded.model, inputs, ad).numpy()
        step("folded")
        manifest = Manifest(
            format=format, model="", backbone=sn.spec.backbone, plan=p.to_json(),
            supernet={"path": str(supernet or p.supernet.get("path", "default")), "sha256": sn.content_hash},
            subnet=config.to_json(), kernels=folded.forms,
            inputs=_tensor_specs(inputs, input_ranges(ad, sn.spec.config), dynamic_batch),
            outputs=[{"name": OUTPUT_NAME, "shape": (["batch", *ref.shape[1:]] if dynamic_batch else list(ref.shape)),
                      "dtype": "float32"}],
            options={"fp16": fp16, "precision": prec, "int8_mode": int8_mode if int8 else None,
                     "dynamic_batch": dynamic_batch, "opset": opset, "batch": batch,
                     "resolution": res, "deployment_target": deployment_target if format == "coreml" else None},
            weights={"torch": folded.weight_bytes(), "ranks": folded.ranks, "shared_bases": folded.shared_bases},
            tools=tool_versions(),
        )
        manifest.checks["precision"] = {"precision": prec, "bound": par.bound(prec).to_json(),
                                        "reference": "PyTorch fp32 subnet", **choice.to_json()}
        # the forms must compute the dense function: checked in torch before any file is written
        if any(f != "dense" for f in folded.forms.values()):
            dense = run_torch(sn.subnet(config), inputs, ad).numpy()
            forms_check = par.compare(ref, dense, runtime="torch-kernel-forms", reference="torch-dense",
                                      tolerance=1e-4, inputs=meta)
            par.require(forms_check, "kernel forms")
            manifest.parity.append(forms_check.to_json())
        with atomic_directory(output) as tmp:
            artifact_out = ref  # what the source check compares: the file's own output where this machine runs it
            out_prec = "fp32"  # the precision of artifact_out
            if format in ("onnx", "trt"):
                name = f"{sn.spec.pipeline['denoiser']}/{ONNX_NAME}" if pipeline else ONNX_NAME
                # TensorRT takes fp16/bf16 as builder flags on an fp32 graph, int8 as Q/DQ nodes in it
                onnx_prec = prec if format == "onnx" or int8 else "fp32"
                keep = partial(nodes_not_at, choice=choice, sn=sn, config=config)
                quant = None
                if int8:
                    quant = _int8_plan(sn, folded, inputs, images, int8_mode, symmetric=format == "trt")
                    quant["exclude"] = partial(keep, target="int8") if choice.mixed else None
                artifact_out = _onnx(tmp, folded.model, ad, inputs, ref, manifest, meta, opset=opset,
                                     dynamic_batch=dynamic_batch, precision=onnx_prec,
                                     fp16=format == "onnx" and "fp16" in choice.kinds,
                                     fp16_keep=partial(keep, target="fp16") if choice.mixed else None,
                                     threshold=external_data_threshold, name=name, quant=quant)
                out_prec = onnx_prec
                if pipeline:
                    from fine_deploy.export.components import write_components

                    write_components(tmp, sn, manifest, meta, format, batch=batch, resolution=res, opset=opset,
                                     fp16=fp16 and format == "onnx", threshold=external_data_threshold,
                                     target=deployment_target)
                    if choice.kinds != {"fp32"} and not fp16:
                        manifest.notes.append(f"only the denoiser is {'+'.join(sorted(choice.kinds))}; the "
                                              "pipeline's other components are exported in fp32")
                    # optimum's layout: the denoiser's config.json beside its graph
                    atomic_write_json(tmp / sn.spec.pipeline["denoiser"] / "config.json",
                                      {"_class_name": sn.spec.backbone, **dict(folded.model.config)})
                step("onnx written and checked")
                if format == "trt":
                    _trt(tmp, inputs, manifest, meta, ref, kinds=choice.kinds, dynamic_batch=dynamic_batch)
            elif format == "coreml":
                name = COREML_NAME
                if pipeline:
                    from fine_deploy.pipelines import pipeline_for

                    name = f"{pipeline_for(sn.spec.pipeline['class']).coreml_denoiser}.mlpackage"
                _coreml(tmp, folded, inputs, ref, manifest, meta, precision=prec, target=deployment_target, name=name)
                if pipeline:
                    from fine_deploy.export.components import write_components

                    # a palettised denoiser computes in fp16; its pipeline's other parts go out in fp16 too
                    write_components(tmp, sn, manifest, meta, format, batch=batch, resolution=res, opset=opset,
                                     fp16=prec != "fp32", threshold=external_data_threshold,
                                     target=deployment_target)
                step("mlpackage written and checked")
            else:
                _diffusers(tmp, sn, config, inputs, ref, manifest, meta, forms_asked, fp16=fp16)
                step("diffusers folder written and checked")
            step("parity")
            if source is not None:
                manifest.checks["source"] = check_against_source(sn, config, source, inputs, artifact_out, meta,
                                                                 precision=out_prec)
            elif skipped:
                manifest.notes.append(f"not compared with the source model: {skipped}")
            _sampling(tmp, sn, manifest)
            manifest.add_files(tmp)
            manifest.write(tmp)
            step("manifest")
    if not quiet:
        print(f"{output}: {export_summary(manifest)}")
    return manifest


def export_module(model: torch.nn.Module, supernet: Supernet, output: str | Path, *, note: str) -> Manifest:
    """ONNX (fp32, batch 1, the supernet's resolution) of a backbone module that is not one of the supernet's
    subnets, e.g. a baseline a study times beside them: the inputs, exporter, parity bound and manifest of
    `export --format onnx`, so `bench` and `time_artifacts` run it as they run an export. `note` says what it is."""
    output = Path(output)
    _check_output(output)
    from fine_deploy.validate import output_dir

    output_dir(output)
    ad = supernet.adapter
    res = ad.check_resolution(supernet.spec.config, None)
    inputs = export_inputs(ad, supernet.spec.config, 1, res, 0, supernet.text_tokens)
    model = model.eval()
    ref = run_torch(model, inputs, ad).numpy()
    params = {id(p): p.numel() * p.element_size() for p in model.parameters()}
    manifest = Manifest(
        format="onnx", model="", backbone=supernet.spec.backbone, plan={},
        supernet={"path": str(supernet.path) if supernet.path else "default", "sha256": supernet.content_hash},
        subnet={}, kernels={}, inputs=_tensor_specs(inputs, input_ranges(ad, supernet.spec.config), False),
        outputs=[{"name": OUTPUT_NAME, "shape": list(ref.shape), "dtype": "float32"}],
        options={"fp16": False, "precision": "fp32", "int8_mode": None, "dynamic_batch": False, "opset": MIN_OPSET,
                 "batch": 1, "resolution": res, "deployment_target": None},
        weights={"torch": {"total": sum(params.values()), "factorised": 0}}, notes=[note], tools=tool_versions(),
    )
    manifest.checks["precision"] = {"precision": "fp32", "bound": par.bound("fp32").to_json(),
                                    "reference": "PyTorch fp32 module"}
    with atomic_directory(output) as tmp:
        _onnx(tmp, model, ad, inputs, ref, manifest, {"batch": 1, "resolution": res, "seed": 0}, opset=MIN_OPSET,
              dynamic_batch=False, precision="fp32", threshold=PROTOBUF_LIMIT)
        manifest.add_files(tmp)
        manifest.write(tmp)
    return manifest


def _calibration_images(sn: Supernet, calib: str | Path | torch.Tensor | None,
                        recipe_calib: Callable[[Supernet, int], torch.Tensor | None] | None,
                        resolution: int) -> torch.Tensor:
    """Static int8's calibration images: `calib`, else the recipe's data, else one line saying what to pass."""
    if isinstance(calib, torch.Tensor):
        return calib
    if calib is not None:
        from fine_deploy.supernet.convert import load_calibration

        path = Path(calib)
        if not path.is_file():
            raise FineDeployError(f"--calib {path} does not exist; pass a .npy or .safetensors image array "
                                  "[N, C, H, W] in [-1, 1], or use --int8-mode dynamic")
        return load_calibration(path)
    images = recipe_calib(sn, resolution) if recipe_calib is not None else None
    if images is None:
        raise FineDeployError("static int8 needs calibration data and this supernet's training data is not "
                              "available here; pass --calib PATH (.npy/.safetensors images [N, C, H, W] in [-1, 1]) "
                              "or use --int8-mode dynamic")
    return images


def _int8_plan(sn: Supernet, folded: FoldedSubnet, inputs: dict[str, torch.Tensor], images: torch.Tensor | None,
               mode: str, *, symmetric: bool) -> dict:
    """What `_onnx` needs to quantise: the mode, the calibration feeds and how they were drawn."""
    from fine_deploy.export.quantize import CALIB_SEED, CHECK_SAMPLES, calibration_feeds

    # the quantised graph is also measured on inputs like the calibration's but never calibrated on
    check = (calibration_feeds(sn, folded.model, images, inputs, samples=CHECK_SAMPLES, seed=CALIB_SEED + 100_000)[0]
             if images is not None else None)
    if mode == "dynamic":
        return {"mode": mode, "feeds": None, "symmetric": symmetric, "calibration": None, "check": check}
    feeds, desc = calibration_feeds(sn, folded.model, images, inputs)
    return {"mode": mode, "feeds": feeds, "symmetric": symmetric, "calibration": desc, "check": check}


def _onnx(tmp: Path, model: torch.nn.Module, adapter: Adapter, inputs: dict[str, torch.Tensor], ref: np.ndarray,
          manifest: Manifest, meta: dict, *, opset: int, dynamic_batch: bool, precision: str, threshold: int,
          name: str = ONNX_NAME, quant: dict | None = None, fp16: bool = False,
          fp16_keep: Callable[[Any], list[str]] | None = None) -> np.ndarray:
    """Write the denoiser's ONNX (fp16 where `fp16`, except the nodes `fp16_keep` names; int8 by `quant`) and
    hold its output to `precision`'s bound."""
    from fine_deploy.export.onnx_export import run_onnx

    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
    target = tmp / name
    trace = target.with_name(f".{target.name}.fp32") if quant else target
    files = export_onnx(model, inputs, trace, adapter=adapter, opset=opset,
                        dynamic_batch=dynamic_batch, fp16=fp16, fp16_keep_fp32=fp16_keep,
                        external_data_threshold=threshold)
    if quant:
        from fine_deploy.export.quantize import quantize_int8

        try:
            done = quantize_int8(files[0], target, mode=quant["mode"], feeds=quant["feeds"],
                                 symmetric=quant["symmetric"], external_data=len(files) > 1,
                                 exclude=quant.get("exclude"))
        finally:
            for f in files:
                f.unlink(missing_ok=True)
        files = [target, *sorted(target.parent.glob(f"{target.name}.data"))]
        manifest.checks["precision"].update(quantization=done, calibration=quant["calibration"])
    manifest.model = name
    manifest.checks["onnx"] = {"checker": "onnx.checker full_check passed", "shape_inference": True,
                               "external_data": len(files) > 1, "opset": opset}
    manifest.weights["onnx_initializers"] = initializer_stats(files[0])
    out, desc = run_onnx(files[0], _feeds(inputs))
    p = par.compare_at(out, ref, precision, runtime=desc["backend"], reference="torch", inputs=meta)
    manifest.parity.append(p.to_json())
    if precision == manifest.options["precision"]:  # a TensorRT fp16 bundle's ONNX is fp32: measured on the engine
        manifest.checks["precision"]["measured"] = {"rel": p.rel, "psnr_db": p.to_json()["psnr_db"],
                                                    "runtime": desc["backend"]}
    par.require(p, name)
    if quant and quant.get("check"):
        manifest.checks["precision"]["measured_on_data"] = _measure_on_data(files[0], model, adapter, quant["check"])
    if dynamic_batch:  # prove the batch axis really is dynamic: run another batch size too
        other = {k: torch.cat([v, v[:1]]) for k, v in inputs.items()}
        ref2 = run_torch(model, other, adapter).numpy()
        out2, _ = run_onnx(files[0], _feeds(other))
        p2 = par.compare_at(out2, ref2, precision, runtime=desc["backend"], reference="torch",
                            inputs={**meta, "batch": meta["batch"] + 1})
        manifest.parity.append(p2.to_json())
        par.require(p2, f"{name} at batch {meta['batch'] + 1}")
    return out


def _measure_on_data(path: Path, model: torch.nn.Module, adapter: Adapter, feeds: list[dict[str, np.ndarray]]) -> dict:
    """PSNR of the graph at `path` against the PyTorch fp32 subnet on data-like inputs (recorded, not bounded:
    a held-out check of the quantisation, whose bound is the parity input's)."""
    from fine_deploy.runtime import SessionOptions, open_session

    psnr = []
    with open_session(path, SessionOptions(threads=1), "onnxruntime-cpu") as s:
        for feed in feeds:
            ref = run_torch(model, {k: torch.from_numpy(v) for k, v in feed.items()}, adapter).numpy()
            psnr.append(par.compare(s.run(feed)[OUTPUT_NAME], ref, runtime="onnxruntime-cpu", reference="torch",
                                    tolerance=None, inputs={}).psnr_db)
    finite = lambda x: float(x) if np.isfinite(x) else None  # noqa: E731  (identical outputs: JSON has no inf)
    return {"samples": len(psnr), "psnr_db_min": finite(min(psnr)), "psnr_db_median": finite(np.median(psnr)),
            "data": "calibration-like inputs (held-out seeds)"}


def _trt(tmp: Path, inputs: dict[str, torch.Tensor], manifest: Manifest, meta: dict, ref: np.ndarray, *,
         kinds: set[str], dynamic_batch: bool) -> None:
    from fine_deploy.export import tensorrt_export as te

    shapes = {k: list(v.shape) for k, v in inputs.items()}
    main = manifest.model  # the denoiser's ONNX file (unet/model.onnx in a pipeline bundle)
    profiles = {main: te.profile_shapes(shapes, dynamic_batch, max_batch=max(2, 2 * meta["batch"]))}
    for comp in manifest.components.values():  # a pipeline's other networks: fixed shapes
        if "model" in comp:
            profiles[comp["model"]] = te.profile_shapes({i["name"]: i["shape"] for i in comp["inputs"]}, False, 1)
    checks = {}
    for name in profiles:
        chk = te.check_onnx_for_tensorrt(tmp / name, profile=True)
        checks[name] = chk.to_json()
        te.require_compatible(chk, name)
    manifest.checks["tensorrt"] = checks[main] if len(checks) == 1 else {"models": checks}
    flags = te.precision_flags(kinds)
    precision = manifest.options["precision"]
    # only the denoiser is quantised: a pipeline's other graphs carry no Q/DQ nodes, so no --int8 for them
    cmds = [te.trtexec_command(name, p, dynamic=dynamic_batch and name == main,
                               **{**flags, "int8": flags["int8"] and name == main})
            for name, p in profiles.items()]
    atomic_write_bytes(tmp / te.TRTEXEC_FILE, te.trtexec_script(cmds).encode())
    atomic_write_bytes(tmp / te.BUILD_SCRIPT, te.build_script(profiles, **flags, int8_models={main}).encode())
    (tmp / te.TRTEXEC_FILE).chmod(0o755)
    (tmp / te.BUILD_SCRIPT).chmod(0o755)
    manifest.checks["tensorrt"].update({"profile": profiles[main], "profiles": profiles, "trtexec": cmds[0],
                                        "trtexec_all": cmds, "build_script": te.BUILD_SCRIPT,
                                        "engine_built": False})
    if te.engine_available():
        te.build_engine_here(tmp)
        engine = tmp / te.engine_name(main)
        from fine_deploy.runtime import SessionOptions, open_session

        with open_session(engine, SessionOptions(), "tensorrt") as s:
            out = s.run(_feeds(inputs))[OUTPUT_NAME]
            versions = s.versions()
        if precision == "fp32":  # TensorRT may pick TF32 tactics for fp32 layers
            pt = par.compare(out, ref, runtime="tensorrt", reference="torch", tolerance=1e-3, inputs=meta)
        else:
            pt = par.compare_at(out, ref, precision, runtime="tensorrt", reference="torch", inputs=meta)
        manifest.parity.append(pt.to_json())
        manifest.checks["precision"]["measured"] = {"rel": pt.rel, "psnr_db": pt.to_json()["psnr_db"],
                                                    "runtime": "tensorrt"}
        par.require(pt, te.engine_name(main))
        manifest.model = te.engine_name(main)
        for comp in manifest.components.values():
            if "model" in comp:
                comp["engine"] = te.engine_name(comp["model"])
        manifest.checks["tensorrt"].update({"engine_built": True, "built_with": versions})
    else:
        manifest.notes.append(
            f"TensorRT bundle ready; build the engine on the target device: python3 {te.BUILD_SCRIPT} "
            f"(or sh {te.TRTEXEC_FILE})"
        )


def _coreml(tmp: Path, folded: FoldedSubnet, inputs: dict[str, torch.Tensor], ref: np.ndarray, manifest: Manifest,
            meta: dict, *, precision: str, target: str, name: str = COREML_NAME) -> None:
    from fine_deploy.cost.precisions import PALETTES
    from fine_deploy.export import coreml_export as ce

    path = tmp / name
    fp16, bits = precision != "fp32", PALETTES.get(precision)  # a palette's weights expand to fp16 compute
    ce.export_coreml(folded.model, inputs, path, adapter=folded.adapter, fp16=fp16, deployment_target=target,
                     palette_bits=bits)
    manifest.model = name
    manifest.checks["coreml"] = ce.check_package(path, folded.model, inputs, fp16=fp16, palette_bits=bits)
    feeds = {k: (v.numpy().astype(np.int32) if not v.is_floating_point() else v.numpy()) for k, v in inputs.items()}
    out = ce.predict(path, feeds)
    if out is None:
        manifest.notes.append("Core ML predictions are only compared on macOS; weights and interface were checked here")
        return
    # Core ML may run an fp32 program's layers in fp16 on the GPU/ANE: predictions are held to a PSNR only
    psnr = par.bound(precision if precision != "fp32" else "fp16").min_psnr_db
    p = par.compare(out, ref, runtime="coreml", reference="torch", tolerance=None, inputs=meta, min_psnr_db=psnr)
    manifest.parity.append(p.to_json())
    manifest.checks["precision"]["measured"] = {"rel": p.rel, "psnr_db": p.to_json()["psnr_db"], "runtime": "coreml"}
    par.require(p, name)


def _sampling(tmp: Path, sn: Supernet, manifest: Manifest) -> None:
    """The training noise schedule travels with every artifact, in diffusers' scheduler/ layout."""
    from fine_deploy.supernet.schedule import (
        SCHEDULER_DIR,
        SCHEDULER_FILE,
        default_guidance,
        training_schedule,
        write_scheduler,
    )

    schedule = training_schedule(sn)
    if not (tmp / SCHEDULER_DIR / SCHEDULER_FILE).exists():  # a diffusers pipeline folder already has it
        write_scheduler(tmp, schedule)
    n_cls = sn.adapter.num_classes(sn.spec.config)
    # a pipeline's own scheduler was copied into scheduler/
    source = "the converted pipeline's scheduler" if sn.components else schedule.source
    manifest.sampling = {"scheduler": f"{SCHEDULER_DIR}/{SCHEDULER_FILE}", "scheduler_source": source,
                         "prediction_type": schedule.config.get("prediction_type", "epsilon"),
                         "guidance_scale": default_guidance(sn), "num_classes": n_cls, "null_class": n_cls}


def _diffusers(tmp: Path, sn: Supernet, config: SubnetConfig, inputs: dict[str, torch.Tensor], ref: np.ndarray,
               manifest: Manifest, meta: dict, forms_asked: dict[str, str], *, fp16: bool) -> None:
    from fine_deploy.export import pipeline_folder as pf
    from fine_deploy.supernet.schedule import training_schedule
    model = sn.subnet(config)
    if fp16:
        model = model.half()
    if sn.components:
        from fine_deploy.export import components as ec

        ec.write_diffusers(tmp, sn, model, manifest, fp16=fp16)
        component = sn.spec.pipeline["denoiser"]
    else:
        component = pf.write_pipeline(tmp, model, sn.adapter, training_schedule(sn))
    manifest.model = component
    if forms_asked:
        names = sorted(set(forms_asked.values()))
        manifest.notes.append(FORMS_NOTE.format(forms="/".join(names), n=len(forms_asked)))
    manifest.kernels = {k: "dense" for k in manifest.kernels}
    loaded = sn.adapter.model_class().from_pretrained(str(tmp / component)).eval().float()
    out = run_torch(loaded, inputs, sn.adapter).numpy()
    tol = par.FP16_REL_TOL if fp16 else par.FP32_REL_TOL
    p = par.compare(out, ref, runtime="diffusers.from_pretrained", reference="torch", tolerance=tol, inputs=meta)
    manifest.parity.append(p.to_json())
    par.require(p, "diffusers folder")
    prompt = "a photo of a cat" if sn.components else None  # a text-to-image pipeline needs a prompt
    checked = pf.check_pipeline(tmp, prompt=prompt) if pf.has_pipeline(tmp) else None
    manifest.checks["diffusers"] = {"config": {k: v for k, v in dict(loaded.config).items() if not k.startswith("_")},
                                    "from_pretrained": "ok", "pipeline": checked}
    if not pf.has_pipeline(tmp):
        manifest.notes.append(f"denoiser only: {component}/ and scheduler/ load with stock from_pretrained; the "
                              f"{sn.adapter.pipeline} around them needs {', '.join(sn.adapter.components[:-1])}")


def export_summary(m: Manifest) -> str:
    """One line for the CLI: where the artifact is, how well it matches, and what to do next."""
    worst = max((p["rel"] for p in m.parity), default=0.0)
    line = f"exported {m.format} ({m.model}), parity rel. error {worst:.1e}"
    src = m.checks.get("source")
    if src:
        what = "equals the source model" if src["expected_exact"] else "approximates the source model"
        line += f"; {what}: rel. error {src['rel']:.1e} (rel. L2 {src['rel_l2']:.1e})"
    return line + ("; " + m.notes[-1] if m.notes else "")
