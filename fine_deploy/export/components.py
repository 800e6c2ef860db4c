"""A converted pipeline's other components in an export: every network (text encoders, VAE decoder) in the
artifact's format, checked against PyTorch, and the carried files (tokenizers, scheduler, configs).

Layouts follow what each ecosystem's users know:
- onnx / trt: optimum's ONNX Runtime pipeline folder — `text_encoder/model.onnx`, `unet/model.onnx` (or
  `transformer/`), `vae_decoder/model.onnx`, each with its `config.json`, plus `tokenizer/`, `scheduler/`
  and `model_index.json`; a TensorRT bundle builds one engine per component with one script;
- coreml: ml-stable-diffusion's per-component packages (`TextEncoder.mlpackage`, `Unet.mlpackage`,
  `VAEDecoder.mlpackage`) with the tokenizer's `vocab.json` / `merges.txt` beside them;
- diffusers: the stock pipeline folder that `DiffusionPipeline.from_pretrained` loads.
Text encoders are exported at batch 1 (one prompt per call, as ml-stable-diffusion does); the VAE decoder at
the plan's batch.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_deploy.components import Carried, Component, component_for
from fine_deploy.export import parity as par
from fine_deploy.export.pipeline_folder import MODEL_INDEX
from fine_deploy.fileio import atomic_write_json

COMPONENT_FP32_REL_TOL = 1e-4


@dataclass
class Network:
    name: str  # the pipeline's folder name (text_encoder, text_encoder_2, vae)
    source: Path  # its carried folder (config.json, weights)
    kind: Component
    model: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    ref: dict[str, np.ndarray]

    @property
    def folder(self) -> str:
        """Its folder in an ONNX / TensorRT export (optimum's names: the VAE's decoder is `vae_decoder`)."""
        return self.kind.export_name if self.kind.role == "vae" else self.name


def networks(sn: Any, batch: int, resolution: int) -> list[Network]:
    """The pipeline's networks loaded in PyTorch with their example inputs and reference outputs."""
    from fine_deploy.pipelines.folder import token_lengths

    out = []
    lengths = token_lengths(_pipeline(sn), sn.component_dir)
    for name, rec in sn.components.items():
        kind = component_for(rec["class"])
        if isinstance(kind, Carried):
            continue
        model = kind.load(sn.component_dir(name), rec["class"]).float()
        shape = {"tokens": lengths.get(name)} if kind.role == "text_encoder" else {"latent_resolution": resolution}
        inputs = kind.example_inputs(model, 1 if kind.role == "text_encoder" else batch, **shape)
        ref = {k: v.numpy() for k, v in kind.run(model, inputs).items()}
        out.append(Network(name, sn.component_dir(name), kind, model, inputs, ref))
    return out


def _pipeline(sn: Any) -> Any:
    from fine_deploy.pipelines import pipeline_for

    return pipeline_for(sn.spec.pipeline["class"])


def _compare(net: Network, got: dict[str, np.ndarray], runtime: str, tol: float, meta: dict) -> list[par.Parity]:
    out = []
    for k in net.kind.output_names:
        p = par.compare(np.asarray(got[k], np.float32), net.ref[k], runtime=runtime, reference="torch", tolerance=tol,
                        inputs={**meta, "component": net.name, "output": k})
        par.require(p, f"{net.name} ({k})")
        out.append(p)
    return out


def _feeds(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in inputs.items()}


def write_components(tmp: Path, sn: Any, manifest: Any, meta: dict, fmt: str, *, batch: int, resolution: int,
                     opset: int, fp16: bool, threshold: int, target: str) -> None:
    """Everything of the pipeline beside the denoiser in an `fmt` export (onnx / trt: ONNX graphs in optimum's
    layout; coreml: ml-stable-diffusion's packages and BPE files), its carried files and model_index.json."""
    nets = networks(sn, batch, resolution)
    if fmt == "coreml":
        write_coreml(tmp, nets, manifest, meta, fp16=fp16, target=target)
        write_bpe_files(tmp, sn)
    else:
        write_onnx(tmp, nets, manifest, meta, opset=opset, fp16=fp16, threshold=threshold)
    copy_carried(tmp, sn, manifest)
    write_index(tmp, sn, onnx_layout=fmt != "coreml")


def write_onnx(tmp: Path, nets: list[Network], manifest: Any, meta: dict, *, opset: int, fp16: bool,
               threshold: int) -> None:
    from fine_deploy.export.onnx_export import export_onnx, run_onnx_outputs

    # a VAE decoder at 512² differs from PyTorch by ~2e-5 in ONNX Runtime's fp32 convolutions (measured on SD
    # 1.5's), far below a pixel's 1/255: components get fp32's bound of 1e-4 (the denoiser keeps 1e-5)
    tol = par.FP16_REL_TOL if fp16 else COMPONENT_FP32_REL_TOL
    for net in nets:
        path = tmp / net.folder / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        files = export_onnx(net.kind.graph(net.model), net.inputs, path, adapter=None, opset=opset, fp16=fp16,
                            external_data_threshold=threshold, output_names=net.kind.output_names)
        got, desc = run_onnx_outputs(path, _feeds(net.inputs))
        checks = _compare(net, got, desc["backend"], tol, meta)
        manifest.parity.extend(p.to_json() for p in checks)
        shutil.copyfile(net.source / "config.json", path.parent / "config.json")
        manifest.components[net.name] = {
            "role": net.kind.role, "model": path.relative_to(tmp).as_posix(), "external_data": len(files) > 1,
            "inputs": _specs(net.inputs), "outputs": [{"name": k, "shape": list(v.shape), "dtype": "float32"}
                                                      for k, v in net.ref.items()],
            "parity_rel": max(p.rel for p in checks)}


def coreml_name(net: Network) -> str:
    """ml-stable-diffusion's package names: TextEncoder, TextEncoder2 (SDXL's second), VAEDecoder."""
    if net.kind.role == "text_encoder":
        return net.kind.coreml_name + net.name.removeprefix("text_encoder").lstrip("_")
    return net.kind.coreml_name


def write_coreml(tmp: Path, nets: list[Network], manifest: Any, meta: dict, *, fp16: bool, target: str) -> None:
    """One .mlpackage per network, its interface and weights checked here, predictions compared on macOS."""
    from fine_deploy.export import coreml_export as ce

    for net in nets:
        path = tmp / f"{coreml_name(net)}.mlpackage"
        ce.export_coreml(net.kind.graph(net.model), net.inputs, path, adapter=None, fp16=fp16,
                         deployment_target=target, output_names=net.kind.output_names)
        check = ce.check_package(path, net.kind.deployed(net.model), net.inputs, fp16=fp16,
                                 output_names=net.kind.output_names)
        manifest.components[net.name] = {"role": net.kind.role, "model": path.name, "inputs": _specs(net.inputs),
                                         "outputs": [{"name": k, "shape": list(v.shape), "dtype": "float32"}
                                                     for k, v in net.ref.items()], "coreml": check}
        got = ce.predict_all(path, _feeds(net.inputs))
        if got is not None:
            checks = _compare(net, got, "coreml", par.FP16_REL_TOL, meta)
            manifest.parity.extend(p.to_json() for p in checks)
            manifest.components[net.name]["parity_rel"] = max(p.rel for p in checks)


def write_bpe_files(tmp: Path, sn: Any) -> None:
    """vocab.json and merges.txt of the first tokenizer, which ml-stable-diffusion's Swift tokenizer reads."""
    import json

    from fine_deploy.pipelines import pipeline_for

    tok = sn.component_dir(pipeline_for(sn.spec.pipeline["class"]).text_encoders[0][1])
    if (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file():
        shutil.copyfile(tok / "vocab.json", tmp / "vocab.json")
        shutil.copyfile(tok / "merges.txt", tmp / "merges.txt")
        return
    model = json.loads((tok / "tokenizer.json").read_text())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    atomic_write_json(tmp / "vocab.json", model["vocab"])
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def _specs(inputs: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in inputs.items()]


def copy_carried(tmp: Path, sn: Any, manifest: Any) -> None:
    """Tokenizers and the scheduler, as the pipeline had them."""
    for name, rec in sn.components.items():
        if isinstance(component_for(rec["class"]), Carried):
            shutil.copytree(sn.component_dir(name), tmp / name)
            manifest.components[name] = {"role": rec["role"], "files": f"{name}/"}


def model_index(sn: Any, *, onnx_layout: bool) -> dict[str, Any]:
    """The source pipeline's model_index.json, with what this export holds: optional components it dropped are
    null; an ONNX layout names optimum's ORT classes' folders."""
    import diffusers

    index = {k: v for k, v in sn.spec.pipeline["model_index"].items()}
    for name in sn.spec.pipeline.get("dropped") or []:
        index[name] = [None, None]
    if "requires_safety_checker" in index:
        index["requires_safety_checker"] = False
    if onnx_layout:
        vae = next((n for n, r in sn.components.items() if r["role"] == "vae"), None)
        if vae is not None:
            index["vae_decoder"] = index.pop(vae)
    index["_diffusers_version"] = diffusers.__version__
    return index


def write_index(tmp: Path, sn: Any, *, onnx_layout: bool) -> None:
    atomic_write_json(tmp / MODEL_INDEX, model_index(sn, onnx_layout=onnx_layout))


def write_diffusers(tmp: Path, sn: Any, denoiser: torch.nn.Module, manifest: Any, *, fp16: bool) -> None:
    """The stock pipeline folder: the subnet as its denoiser, every other component copied unchanged."""
    folder = sn.spec.pipeline["denoiser"]
    denoiser.save_pretrained(str(tmp / folder), safe_serialization=True)
    for name, rec in sn.components.items():
        shutil.copytree(sn.component_dir(name), tmp / name)
        manifest.components[name] = {"role": rec["role"], "files": f"{name}/"}
    write_index(tmp, sn, onnx_layout=False)
