"""diffusers pipeline folders: the backbone in its component folder, scheduler/, and model_index.json.

A UNet2DModel folder is a stock `DDIMPipeline` (DDIMPipeline runs any DDPM/DDIM scheduler config as DDIM).
A class-conditional pixel-space DiT has no stock pipeline (DiTPipeline needs a VAE), so its folder also
carries `pipeline.py` (the adapter's `pipeline_file`, torch + diffusers only) and model_index.json
names it; stock `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads both. A text-to-
image denoiser (SD UNet, PixArt, SD3) exported alone is its component folder + scheduler/, each loadable by
stock `from_pretrained`; its whole pipeline needs the text encoders and VAE beside it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fine_deploy.backbones import Adapter
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_bytes, atomic_write_json
from fine_deploy.pipelines.folder import MODEL_INDEX
from fine_deploy.supernet.schedule import Schedule, write_scheduler

PIPELINE_FILE = "pipeline.py"


def model_index(adapter: Adapter) -> dict[str, Any] | None:
    """model_index.json of a folder holding the denoiser and its scheduler (None: no pipeline runs them alone)."""
    import diffusers

    index = adapter.model_index()
    return None if index is None else {**index, "_diffusers_version": diffusers.__version__}


def needs_remote_code(folder: str | Path) -> bool:
    """Whether the folder's pipeline class lives in its own pipeline.py (the DiT pipeline)."""
    return (Path(folder) / PIPELINE_FILE).is_file()


def write_pipeline(folder: Path, model: nn.Module, adapter: Adapter, schedule: Schedule) -> str:
    """Write the denoiser's component folder and scheduler/ into `folder`, plus model_index.json where a
    pipeline runs them alone; returns the component folder name."""
    model.save_pretrained(str(folder / adapter.component), safe_serialization=True)
    write_scheduler(folder, schedule)
    index = model_index(adapter)
    if index is None:
        return adapter.component
    if adapter.pipeline_file:  # the folder's own pipeline class, named ["pipeline", CLASS] in model_index.json
        source = (files("fine_deploy.backbones") / adapter.pipeline_file).read_text()
        atomic_write_bytes(folder / PIPELINE_FILE, source.encode())
    atomic_write_json(folder / MODEL_INDEX, index)
    return adapter.component


def has_pipeline(folder: str | Path) -> bool:
    return (Path(folder) / MODEL_INDEX).is_file()


def load_pipeline(folder: str | Path) -> Any:
    """The folder through stock `DiffusionPipeline.from_pretrained` (remote code only for its own pipeline.py)."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlog

    was_on = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()  # the component-loading bar would break the export's own progress line
    try:
        pipe = DiffusionPipeline.from_pretrained(str(folder), trust_remote_code=needs_remote_code(folder),
                                                 **null_components(folder))
    finally:
        if was_on:
            dlog.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def null_components(folder: str | Path) -> dict[str, None]:
    """Components the folder leaves null that its stock class does not list as optional (SD3 without T5):
    diffusers loads them only when passed as None, as its docs show (`text_encoder_3=None, tokenizer_3=None`)."""
    import diffusers

    from fine_deploy.fileio import read_json

    index = read_json(Path(folder) / MODEL_INDEX, missing="re-export", invalid="re-export")
    cls = getattr(diffusers, str(index.get("_class_name")), None)
    optional = set(getattr(cls, "_optional_components", []))
    return {k: None for k, v in index.items() if not k.startswith("_") and v == [None, None] and k not in optional}


def check_pipeline(folder: Path, steps: int = 2, prompt: str | None = None) -> dict[str, Any]:
    """Load the folder with stock diffusers and sample one image in `steps` steps (from `prompt` for a
    text-to-image pipeline); raise if that fails."""
    import torch

    try:
        pipe = load_pipeline(folder)
        args = () if prompt is None else (prompt,)
        img = pipe(*args, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                   output_type="np").images
    except Exception as e:  # diffusers raises many types; any of them means the folder is unusable
        first = str(e).splitlines()[0] if str(e) else ""
        raise FineDeployError(f"the exported pipeline folder does not load in diffusers ({type(e).__name__}: "
                              f"{first}); nothing was written — report a bug") from None
    img = np.asarray(img)
    if not np.isfinite(img).all():
        raise FineDeployError("the exported pipeline samples NaN/inf; nothing was written — re-export without --fp16")
    out = {"class": type(pipe).__name__, "loader": "diffusers.DiffusionPipeline.from_pretrained",
           "trust_remote_code": needs_remote_code(folder), "steps": steps, "image_shape": list(img.shape)}
    if prompt is not None:
        out.update(prompt=prompt, null_components=sorted(null_components(folder)))
    return out
