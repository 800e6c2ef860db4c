"""StableDiffusionPipeline (SD 1.x / 2.x)."""

from __future__ import annotations

from typing import Any

import torch

from fine_deploy.pipelines.base import Encoded, Pipeline


class StableDiffusion(Pipeline):
    """SD 1.x / 2.x: CLIP's last hidden state conditions the UNet; "" is the unconditional prompt."""

    class_name = "StableDiffusionPipeline"
    denoiser = "unet"
    text_encoders = (("text_encoder", "tokenizer"),)
    guidance = 7.5

    def conditions(self, encoded: list[Encoded], config: dict[str, Any],
                   image_size: int = 0) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": encoded[0]["last_hidden_state"]}
