"""`sample`: ARTIFACT -> image grid (PNG) + sample.json, optionally side by side with the full model.

ARTIFACT is an export directory (run through the shared runtime layer: ONNX Runtime, TensorRT, Core ML,
or PyTorch for a diffusers folder), a plan.json (its subnet in PyTorch), a supernet directory or
`default` (the full model in PyTorch). `compare` samples the same seeds and labels through the full
model of the same supernet and reports the per-image difference and the Fréchet distance of the batch.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_json
from fine_deploy.sample.denoisers import Denoiser, ModelInfo, SessionDenoiser, TorchDenoiser
from fine_deploy.sample.loop import denoise
from fine_deploy.supernet.schedule import (
    Schedule,
    default_guidance,
    make_scheduler,
    read_scheduler,
    training_schedule,
)

SCHEMA = 1
FORMAT = "fine-deploy-sample"
MAX_IMAGES = 1024


@dataclass
class Source:
    """What ARTIFACT resolved to: the network to sample, its schedule, and how to find its full model."""

    kind: str  # "export" | "plan" | "supernet"
    denoiser: Denoiser
    schedule: Schedule
    guidance: float  # the default guidance scale recorded with the model (1.0: none)
    full: Any  # () -> Supernet of the full model, for --compare
    describe: dict[str, Any] = field(default_factory=dict)
    parts: Any = None  # PipelineParts: a whole text-to-image pipeline's other components (None: a denoiser alone)


@dataclass
class SampleResult:
    images: np.ndarray  # [n, C, H, W] in [-1, 1]
    full_images: np.ndarray | None  # the full model's images for the same seeds (compare), else None
    record: dict[str, Any]  # what sample.json holds


def _parts(sn: Any) -> Any:
    from fine_deploy.sample.pipeline import parts_of_supernet

    return parts_of_supernet(sn) if sn.components else None


def _supernet_source(path: str | Path | None) -> Source:
    from fine_deploy.supernet.core import load_supernet

    sn = load_supernet(path)
    info = ModelInfo.from_config(sn.spec.backbone, sn.spec.config, tokens=sn.text_tokens)
    where = "default" if path is None or str(path) == "default" else str(path)
    return Source("supernet", TorchDenoiser(sn.subnet(sn.full_config()), info, f"full supernet {where}"),
                  training_schedule(sn), default_guidance(sn), lambda: _root_supernet(sn, where),
                  {"supernet": {"path": where, "sha256": sn.content_hash}, "subnet": sn.full_config().to_json()},
                  _parts(sn))


def _plan_source(path: Path, supernet: str | Path | None) -> Source:
    from fine_deploy.planner.schema import Plan, supernet_for_plan
    from fine_deploy.supernet.core import SubnetConfig

    plan = Plan.load(path)
    sn = supernet_for_plan(plan, supernet)
    config = sn.validate(SubnetConfig.from_json(plan.subnet))
    res = plan.inputs.get("resolution")
    info = ModelInfo.from_config(sn.spec.backbone, sn.spec.config, res, sn.text_tokens)
    where = str(supernet or plan.supernet.get("path", "default"))
    return Source("plan", TorchDenoiser(sn.subnet(config), info, f"plan {path}"), training_schedule(sn),
                  default_guidance(sn), lambda: _root_supernet(sn, where),
                  {"plan": str(path), "supernet": {"path": where, "sha256": sn.content_hash},
                   "subnet": config.to_json()}, _parts(sn))


def _export_info(m: Any) -> ModelInfo:
    from fine_deploy.backbones import adapter_for

    x = m.inputs[0]["shape"]
    labels = next((i for i in m.inputs if i["name"] == "class_labels"), None)
    n_cls = int(labels["range"][1]) if labels and labels.get("range") else None
    conds = {i["name"]: tuple(i["shape"][1:]) for i in m.inputs[1:] if i["name"] not in ("timestep", "class_labels")}
    return ModelInfo(m.backbone, int(x[1]), int(x[-1]), n_cls, conds, adapter_for(m.backbone).latent)


def _root_supernet(sn: Any, where: Any) -> Any:
    """The full model to compare with: a retrained SUBNET's parent supernet, not the subnet itself."""
    from fine_deploy.supernet.core import load_supernet

    parent = sn.spec.provenance.get("parent") if isinstance(sn.spec.provenance, dict) else None
    while parent:
        try:
            up = load_supernet(parent.get("path", "default"))
        except FineDeployError as e:
            raise FineDeployError(f"--compare: {where} was retrained from {parent.get('path')}, which cannot be "
                                  f"loaded ({e}); pass the parent with --supernet") from None
        if parent.get("sha256") and up.content_hash != parent["sha256"]:
            raise FineDeployError(f"--compare: the parent supernet {parent.get('path')} of {where} has changed "
                                  "since retraining; pass the original with --supernet")
        sn, where = up, parent.get("path")
        parent = sn.spec.provenance.get("parent") if isinstance(sn.spec.provenance, dict) else None
    return sn


def _export_source(directory: Path, backend: str, threads: int | None, supernet: str | Path | None) -> Source:
    from fine_deploy.export.manifest import Manifest

    m = Manifest.load(directory)
    info = _export_info(m)
    sampling = dict(getattr(m, "sampling", None) or {})
    stored = read_scheduler(directory)
    schedule = Schedule(stored, sampling.get("scheduler_source", "the artifact's scheduler/"), stored["_class_name"])
    if m.format == "diffusers":
        from fine_deploy.backbones import adapter_for

        model = adapter_for(m.backbone).model_class().from_pretrained(str(directory / m.model))
        denoiser: Denoiser = TorchDenoiser(model, info, f"diffusers folder {directory}")
    else:
        from fine_deploy.runtime import SessionOptions, open_session

        denoiser = SessionDenoiser(open_session(directory, SessionOptions(threads=threads), backend), info)

    def full() -> Any:
        from fine_deploy.supernet.core import load_supernet

        where = supernet if supernet is not None else m.supernet.get("path", "default")
        try:
            sn = load_supernet(where)
        except (FineDeployError, OSError) as e:
            raise FineDeployError(f"--compare needs the supernet this artifact came from ({where}): {e}; "
                                  "pass it with --supernet") from None
        if m.supernet.get("sha256") and sn.content_hash != m.supernet["sha256"]:
            raise FineDeployError(f"supernet {where} (hash {sn.content_hash[:12]}) is not the one {directory} was "
                                  f"exported from (hash {m.supernet['sha256'][:12]}); pass the right --supernet")
        return _root_supernet(sn, where)

    parts = None
    if m.components:
        from fine_deploy.sample.pipeline import parts_from_export

        parts = parts_from_export(directory, m, backend, threads)
    return Source("export", denoiser, schedule, float(sampling.get("guidance_scale", 1.0)), full,
                  {"export": str(directory), "format": m.format, "supernet": m.supernet, "subnet": m.subnet}, parts)


def open_source(artifact: str | Path, *, backend: str = "auto", threads: int | None = None,
                supernet: str | Path | None = None) -> Source:
    """Resolve ARTIFACT (export dir | plan.json | supernet dir | "default") to a denoiser and its schedule."""
    if str(artifact) == "default":
        return _supernet_source(None)
    path = Path(artifact)
    if path.is_dir() and (path / "manifest.json").is_file():
        return _export_source(path, backend, threads, supernet)
    if path.is_dir() and (path / "supernet.json").is_file():
        return _supernet_source(path)
    if path.is_file() and path.suffix == ".json":
        return _plan_source(path, supernet)
    if not path.exists():
        raise FineDeployError(f"{path} does not exist; pass an export directory, a plan.json, a supernet "
                              "directory or `default`")
    raise FineDeployError(f"{path} is not an export directory (manifest.json), a plan.json or a supernet "
                          "directory (supernet.json); sample one of those (bare model files carry no schedule)")


def parse_labels(text: str | None) -> list[int] | None:
    """`--labels 0,1,2` -> [0, 1, 2]."""
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise FineDeployError(f"--labels {text!r}: give comma-separated class ids, e.g. 0,1,2") from None


def _labels(info: ModelInfo, n: int, labels: list[int] | None) -> torch.Tensor | None:
    if not info.class_conditional:
        if labels:
            raise FineDeployError("--labels given but this model is not class-conditional; drop --labels")
        return None
    k = int(info.num_classes)
    if not labels:
        return torch.arange(n) % k
    bad = [v for v in labels if not 0 <= v < k]
    if bad:
        raise FineDeployError(f"--labels {bad[0]} is outside this model's classes 0..{k - 1}")
    return torch.tensor([labels[i % len(labels)] for i in range(n)])


def conditions(info: ModelInfo, n: int, labels: torch.Tensor | None, seed: int) -> dict[str, torch.Tensor] | None:
    """The conditioning of `n` images: class labels, and for text models seeded stand-in embeddings
    (a denoiser exported alone has no text encoder; image i's embedding depends only on seed + i)."""
    cond = {} if labels is None else {"class_labels": labels}
    for name, shape in info.conditions.items():
        gens = [torch.Generator().manual_seed(10_007 * (seed + i) + len(name)) for i in range(n)]
        cond[name] = torch.stack([torch.randn(shape, generator=g) for g in gens])
    return cond or None


def _frechet(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Fréchet distance of two image batches in the digits classifier's features (sample.digits_metric)."""
    if a.shape[1] != 1:
        return {"value": None, "why": f"the metric's classifier reads 1-channel digits; these have {a.shape[1]}"}
    if len(a) < 2:
        return {"value": None, "why": "needs at least 2 images per batch"}
    from fine_deploy.sample.digits_metric import features, frechet_distance, load_classifier

    net = load_classifier()
    fa, fb = features(torch.from_numpy(a), net), features(torch.from_numpy(b), net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer images than feature dims: singular covariances are expected
        fd = frechet_distance(fa, fb)
    # sqrtm of a singular product can overshoot by rounding: a distance is never negative
    return {"value": round(max(fd, 0.0), 6), "images": len(a),
            "feature_space": "fine-deploy digits classifier (64-d), not Inception; small batches are noisy"}


def _check_args(steps: int, n: int, guidance: float | None, output: Path | None, json_path: Path | None) -> None:
    if steps < 1:
        raise FineDeployError(f"--steps {steps}: sample with at least 1 step")
    if not 1 <= n <= MAX_IMAGES:
        raise FineDeployError(f"--n {n}: sample 1..{MAX_IMAGES} images")
    if guidance is not None and guidance < 0:
        raise FineDeployError(f"--guidance {guidance} must be ≥ 0 (1 = no guidance)")
    if output is not None and output.suffix.lower() != ".png":
        raise FineDeployError(f"-o {output}: the grid is written as PNG; name it *.png")
    if json_path is not None and json_path.suffix.lower() != ".json":
        raise FineDeployError(f"--json {json_path}: name it *.json")
    from fine_deploy.validate import output_file

    output_file(output, "-o", "grid.png")
    output_file(json_path, "--json", "sample.json")


def sample(
    artifact: str | Path,
    *,
    steps: int = 25,
    seed: int = 0,
    n: int = 16,
    output: str | Path | None = None,
    compare: bool = False,
    sampler: str = "ddim",
    guidance: float | None = None,
    labels: list[int] | None = None,
    backend: str = "auto",
    threads: int | None = None,
    supernet: str | Path | None = None,
    json_path: str | Path | None = None,
    prompt: str | None = None,
    negative_prompt: str = "",
    quiet: bool = True,
) -> SampleResult:
    """Sample `n` images from ARTIFACT with `steps` DDIM/DDPM steps; write a PNG grid (+ JSON) when `output`.

    A whole text-to-image pipeline (a converted pipeline folder, or its export) samples `prompt`: tokenize,
    encode, denoise with classifier-free guidance against `negative_prompt`, decode with its VAE."""
    output = Path(output) if output is not None else None
    json_path = Path(json_path) if json_path is not None else (output.with_suffix(".json") if output else None)
    _check_args(steps, n, guidance, output, json_path)
    make_scheduler({}, sampler)  # an unknown sampler fails before any model loads
    src = open_source(artifact, backend=backend, threads=threads, supernet=supernet)
    if src.parts is None and prompt is not None:
        raise FineDeployError(f"--prompt: {artifact} is a denoiser alone (no text encoder or VAE); convert and export "
                              "the whole pipeline folder to sample from a prompt")
    if src.parts is not None and prompt is None:
        raise FineDeployError(f"{artifact} is a whole text-to-image pipeline; give --prompt \"...\"")
    info = src.denoiser.info
    lab = _labels(info, n, labels)
    cond = conditions(info, n, lab, seed) if src.parts is None else None
    g = float(src.guidance if guidance is None else guidance)
    if not info.guided and g != 1.0:
        if guidance is not None:
            raise FineDeployError(f"--guidance {g}: classifier-free guidance needs a class- or text-conditioned model")
        g = 1.0
    full_denoiser, full_ref, full_parts = None, None, None
    if compare:
        from fine_deploy.supernet.core import SubnetConfig

        sn = src.full()
        full_parts = _parts(sn) if src.parts is not None else None
        cfg = SubnetConfig({t.name: t.max_rank for t in sn.types}, {}, None)
        full_info = ModelInfo(sn.spec.backbone, info.channels, info.resolution, info.num_classes, info.conditions,
                              info.latent)
        full_denoiser = TorchDenoiser(sn.subnet(cfg), full_info, "full supernet")
        full_ref = {"path": str(sn.path) if sn.path else "default", "sha256": sn.content_hash}

    runs = [("compressed" if compare else "model", src.denoiser)]
    if full_denoiser is not None:
        runs.append(("full", full_denoiser))
    outs: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True, disable=quiet) as progress:
        for name, den in runs:
            task = progress.add_task(f"sample {name} ({den.runtime})", total=steps)
            t0 = time.perf_counter()
            step = lambda task=task: progress.advance(task)  # noqa: E731
            if src.parts is not None:
                from fine_deploy.sample.pipeline import generate

                parts = full_parts if name == "full" else src.parts
                scheduler = make_scheduler(parts.scheduler_config, sampler)
                pixels = generate(parts, den, [prompt] * n, scheduler, steps=steps, seed=seed, guidance=g,
                                  negative=negative_prompt, on_step=step)
                imgs = torch.from_numpy(pixels * 2 - 1)  # the grid and the record take [-1, 1] like other models
            else:
                scheduler = make_scheduler({**src.schedule.config, "_class_name": src.schedule.cls}, sampler)
                imgs = denoise(den, scheduler, n, steps=steps, seed=seed, cond=cond, guidance=g, on_step=step)
            seconds[name] = round(time.perf_counter() - t0, 4)
            outs[name] = imgs.numpy()
            den.close()
    images = outs["compressed" if compare else "model"]
    if not np.isfinite(images).all():
        raise FineDeployError("the model produced NaN/inf images; re-export in fp32 or check the plan")
    record: dict[str, Any] = {
        "schema": SCHEMA, "format": FORMAT, "artifact": str(artifact), "source": src.kind, **src.describe,
        "model": src.denoiser.describe(), "steps": steps, "seed": seed, "seeds": [seed + i for i in range(n)],
        "n": n, "sampler": sampler, "scheduler": src.schedule.to_json(), "guidance_scale": g,
        "labels": None if lab is None else lab.tolist(), "image_shape": list(images.shape[1:]),
        # a latent denoiser exported alone has no VAE to decode with, nor a text encoder: its samples are
        # latents, conditioned on seeded stand-in embeddings (whole pipelines: convert a pipeline folder)
        "space": "latent" if info.latent and src.parts is None else "pixel",
        "conditioning": sorted(info.conditions) or None,
        "prompt": prompt, "negative_prompt": negative_prompt if prompt is not None else None,
        "pipeline": {"class": src.parts.pipeline.class_name, "runtime": src.parts.runtime}
        if src.parts is not None else None,
        "seconds": seconds, "output": str(output) if output else None,
    }
    full_images = outs.get("full")
    if full_images is not None:
        d = np.abs(images - full_images).reshape(n, -1)
        record["compare"] = {
            "full": {"supernet": full_ref, "runtime": "torch"},
            "per_image": [{"seed": seed + i, "label": None if lab is None else int(lab[i]),
                           "max_abs_diff": round(float(d[i].max()), 6), "mean_abs_diff": round(float(d[i].mean()), 6)}
                          for i in range(n)],
            "mean_abs_diff": round(float(d.mean()), 6),
            "frechet_distance": _frechet(images, full_images),
        }
    if output is not None:
        from fine_deploy.sample.grid import compare_array, grid_array, save_png

        arr = compare_array(images, full_images, ("compressed", "full")) if full_images is not None \
            else grid_array(images)
        save_png(arr, output)
    if json_path is not None:
        atomic_write_json(json_path, json.loads(json.dumps(record, default=str)))
    if not quiet:
        print(summary(record, json_path))
    return SampleResult(images, full_images, record)


def summary(record: dict[str, Any], json_path: Path | None) -> str:
    """One line for the CLI: what was written and, with --compare, how far it is from the full model."""
    line = (f"{record['output'] or 'no grid'}: {record['n']} images, {record['steps']} {record['sampler']} steps "
            f"on {record['model']['runtime']} in {sum(record['seconds'].values()):.1f} s")
    if "compare" in record:
        c = record["compare"]
        fd = c["frechet_distance"]["value"]
        line += f"; vs full: mean |diff| {c['mean_abs_diff']:.4f}" + (f", Fréchet {fd:.3f}" if fd is not None else "")
    return line + (f"; {json_path}" if json_path else "")


__all__ = ["SampleResult", "Source", "open_source", "parse_labels", "sample", "summary"]
