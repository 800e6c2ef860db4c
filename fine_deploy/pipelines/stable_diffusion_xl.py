"""StableDiffusionXLPipeline: two CLIP encoders side by side, the second's projected embedding and the image
size micro-conditions (`time_ids`) as the UNet's added conditions; an empty negative prompt is zeros when
the pipeline says `force_zeros_for_empty_prompt` (the stock default)."""

from __future__ import annotations

from typing import Any

import torch

from fine_deploy.pipelines.base import Encoded, Pipeline


class StableDiffusionXL(Pipeline):
    class_name = "StableDiffusionXLPipeline"
    denoiser = "unet"
    text_encoders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    guidance = 5.0

    def conditions(self, encoded: list[Encoded], config: dict[str, Any],
                   image_size: int = 0) -> dict[str, torch.Tensor]:
        n = encoded[0]["penultimate_hidden_state"].shape[0]
        # original size, crop top-left, target size: the stock defaults for an unconditioned crop
        time_ids = torch.tensor([image_size, image_size, 0, 0, image_size, image_size], dtype=torch.float32)
        return {"encoder_hidden_states": torch.cat([e["penultimate_hidden_state"] for e in encoded], dim=-1),
                "text_embeds": encoded[-1]["pooled"], "time_ids": time_ids.expand(n, 6).clone()}

    def unconditional(self, cond: dict[str, torch.Tensor], negative: str, encode: Any, options: dict[str, Any]) -> dict:
        if negative == "" and options.get("force_zeros_for_empty_prompt", True):
            return {k: (v if k == "time_ids" else torch.zeros_like(v)) for k, v in cond.items()}
        return encode()
