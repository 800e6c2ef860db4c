"""A stock diffusers text-to-image pipeline class, as fine-deploy converts, plans, exports and samples it.

Each subclass says what the stock pipeline does around the denoiser, so that fine-deploy can run the
exported components the same way on any runtime: which text encoders read the prompt (and with which
tokenizer), how their outputs become the denoiser's conditioning (and the unconditional branch of
classifier-free guidance), how latents are scaled before the VAE decodes them, and which components the
stock class lets be absent.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

Encoded = dict[str, torch.Tensor]  # one text encoder's outputs by ClipTextEncoder.output_names


class Pipeline:
    class_name: ClassVar[str]
    denoiser: ClassVar[str]  # the denoiser's folder: "unet" | "transformer"
    text_encoders: ClassVar[tuple[tuple[str, str], ...]]  # (text encoder, its tokenizer), in prompt order
    vae: ClassVar[str] = "vae"
    # components the stock class accepts as null in model_index.json (dropped or absent here)
    optional: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor", "image_encoder")
    guidance: ClassVar[float] = 7.5  # the stock pipeline's default guidance_scale
    coreml_denoiser: ClassVar[str] = "Unet"  # ml-stable-diffusion's package name for the denoiser

    def text_tokens(self, lengths: list[int], config: dict[str, Any]) -> int:
        """The length of the denoiser's text sequence, from the tokenizers' lengths."""
        return lengths[0]

    def conditions(self, encoded: list[Encoded], config: dict[str, Any],
                   image_size: int = 0) -> dict[str, torch.Tensor]:
        """The denoiser's conditioning inputs from each text encoder's outputs (one row per prompt), for images
        of `image_size` pixels a side."""
        raise NotImplementedError

    def unconditional(self, cond: dict[str, torch.Tensor], negative: str, encode: Any, options: dict[str, Any]) -> dict:
        """The guidance's unconditional inputs for the `negative` prompt (`encode()` encodes it, called only
        when needed); `options` are the pipeline's model_index.json settings."""
        return encode()

    def latents_for_vae(self, latents: torch.Tensor, vae_config: dict[str, Any]) -> torch.Tensor:
        return latents / float(vae_config.get("scaling_factor") or 1.0)

    def stock_call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that make the stock pipeline compute what fine-deploy's runner computes."""
        return {}
