"""diffusers pipeline folders: model_index.json, scheduler/, the backbone in its component folder.

A UNet2DModel folder is a stock `DDIMPipeline` (DDIMPipeline runs any DDPM/DDIM scheduler config as DDIM).
A class-conditional pixel-space DiT has no stock pipeline (DiTPipeline needs a VAE), so its folder also
carries `pipeline.py` (fine_deploy/export/pixel_pipeline.py, torch + diffusers only) and model_index.json
names it; stock `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads both.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_bytes, atomic_write_json
from fine_deploy.sample.schedule import Schedule, write_scheduler

MODEL_INDEX = "model_index.json"
PIPELINE_FILE = "pipeline.py"
DIT_PIPELINE = "PixelDiTPipeline"
COMPONENT = {"UNet2DModel": "unet", "DiTTransformer2DModel": "transformer"}


def model_index(backbone: str) -> dict[str, Any]:
    import diffusers

    comp = COMPONENT[backbone]
    pipeline: str | list[str] = "DDIMPipeline" if backbone == "UNet2DModel" else [PIPELINE_FILE[:-3], DIT_PIPELINE]
    return {"_class_name": pipeline, "_diffusers_version": diffusers.__version__,
            comp: ["diffusers", backbone], "scheduler": ["diffusers", "DDPMScheduler"]}


def needs_remote_code(folder: str | Path) -> bool:
    """Whether the folder's pipeline class lives in its own pipeline.py (the DiT pipeline)."""
    return (Path(folder) / PIPELINE_FILE).is_file()


def write_pipeline(folder: Path, model: nn.Module, backbone: str, schedule: Schedule) -> str:
    """Write the pipeline folder for `model` into `folder`; returns the backbone's component folder name."""
    if backbone not in COMPONENT:
        raise FineDeployError(f"no diffusers pipeline layout for {backbone}; export --format onnx instead")
    comp = COMPONENT[backbone]
    model.save_pretrained(str(folder / comp), safe_serialization=True)
    write_scheduler(folder, schedule)
    if backbone == "DiTTransformer2DModel":
        source = (files("fine_deploy.export") / "pixel_pipeline.py").read_text()
        atomic_write_bytes(folder / PIPELINE_FILE, source.encode())
    atomic_write_json(folder / MODEL_INDEX, model_index(backbone))
    return comp


def load_pipeline(folder: str | Path) -> Any:
    """The folder through stock `DiffusionPipeline.from_pretrained` (remote code only for its own pipeline.py)."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlog

    was_on = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()  # the component-loading bar would break the export's own progress line
    try:
        pipe = DiffusionPipeline.from_pretrained(str(folder), trust_remote_code=needs_remote_code(folder))
    finally:
        if was_on:
            dlog.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_pipeline(folder: Path, steps: int = 2) -> dict[str, Any]:
    """Load the folder with stock diffusers and sample one image in `steps` steps; raise if that fails."""
    import torch

    try:
        pipe = load_pipeline(folder)
        img = pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np").images
    except Exception as e:  # diffusers raises many types; any of them means the folder is unusable
        first = str(e).splitlines()[0] if str(e) else ""
        raise FineDeployError(f"the exported pipeline folder does not load in diffusers ({type(e).__name__}: "
                              f"{first}); nothing was written — report a bug") from None
    img = np.asarray(img)
    if not np.isfinite(img).all():
        raise FineDeployError("the exported pipeline samples NaN/inf; nothing was written — re-export without --fp16")
    return {"class": type(pipe).__name__, "loader": "diffusers.DiffusionPipeline.from_pretrained",
            "trust_remote_code": needs_remote_code(folder), "steps": steps, "image_shape": list(img.shape)}
