"""Stock diffusers text-to-image pipeline classes fine-deploy handles whole, registered by class name."""

from __future__ import annotations

from fine_deploy.errors import FineDeployError
from fine_deploy.pipelines.base import Pipeline
from fine_deploy.pipelines.stable_diffusion import StableDiffusion
from fine_deploy.pipelines.stable_diffusion_3 import StableDiffusion3
from fine_deploy.pipelines.stable_diffusion_xl import StableDiffusionXL

_ALL: tuple[Pipeline, ...] = (StableDiffusion(), StableDiffusionXL(), StableDiffusion3())
SUPPORTED_PIPELINES = {p.class_name: p for p in _ALL}


def pipeline_for(class_name: str, where: str = "") -> Pipeline:
    if class_name not in SUPPORTED_PIPELINES:
        raise FineDeployError(f"{where}pipeline class {class_name!r} is not supported whole; supported: "
                              f"{', '.join(sorted(SUPPORTED_PIPELINES))} (convert its denoiser folder alone instead)")
    return SUPPORTED_PIPELINES[class_name]


__all__ = ["Pipeline", "SUPPORTED_PIPELINES", "pipeline_for"]
