"""StableDiffusion3Pipeline (SD3 / SD3.5 without T5, or with T5 zeroed as the stock class does)."""

from __future__ import annotations

from typing import Any

import torch

from fine_deploy.pipelines.base import Encoded, Pipeline


class StableDiffusion3(Pipeline):
    """SD3: CLIP-L and CLIP-G penultimate states side by side, zero-padded to the joint width, then T5's
    tokens (zeros when the pipeline has no T5, as the stock class does with text_encoder_3=None); pooled
    projections are both CLIPs' projected embeddings."""

    class_name = "StableDiffusion3Pipeline"
    denoiser = "transformer"
    text_encoders = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    optional = ("image_encoder", "feature_extractor", "text_encoder_3", "tokenizer_3")
    guidance = 7.0
    coreml_denoiser = "MultiModalDiffusionTransformer"
    t5_tokens = 256  # the stock pipeline's default max_sequence_length

    def text_tokens(self, lengths: list[int], config: dict[str, Any]) -> int:
        return lengths[0] + self.t5_tokens

    def conditions(self, encoded: list[Encoded], config: dict[str, Any],
                   image_size: int = 0) -> dict[str, torch.Tensor]:
        clip = torch.cat([e["penultimate_hidden_state"] for e in encoded], dim=-1)
        width = int(config["joint_attention_dim"])
        clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
        t5 = torch.zeros(clip.shape[0], self.t5_tokens, width, dtype=clip.dtype)
        return {"encoder_hidden_states": torch.cat([clip, t5], dim=-2),
                "pooled_projections": torch.cat([e["pooled"] for e in encoded], dim=-1)}

    def latents_for_vae(self, latents: torch.Tensor, vae_config: dict[str, Any]) -> torch.Tensor:
        return latents / float(vae_config.get("scaling_factor") or 1.0) + float(vae_config.get("shift_factor") or 0.0)

    def stock_call_kwargs(self) -> dict[str, Any]:
        return {"max_sequence_length": self.t5_tokens}
