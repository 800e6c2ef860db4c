"""AutoencoderKL's decoder: latents -> images in [-1, 1] (what optimum and Olive export as `vae_decoder`).

The pipeline scales the latents (÷ scaling_factor, + shift_factor) before the graph, as the stock
pipelines do, so the graph is `vae.decode` alone.
"""

from __future__ import annotations

import torch
from torch import nn

from fine_deploy.components.base import Component


class _Decoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeDecoder(Component):
    library = "diffusers"
    classes = ("AutoencoderKL",)
    role = "vae"
    export_name = "vae_decoder"
    coreml_name = "VAEDecoder"
    input_names = ("latent_sample",)
    output_names = ("sample",)

    def graph(self, model: nn.Module) -> nn.Module:
        return _Decoder(model).eval()

    def deployed(self, model: nn.Module) -> nn.Module:
        post = getattr(model, "post_quant_conv", None)
        return nn.ModuleList([model.decoder] + ([post] if post is not None else []))

    def scale_factor(self, model: nn.Module) -> int:
        return 2 ** (len(model.config.block_out_channels) - 1)

    def example_inputs(self, model: nn.Module, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        res = int(shape["latent_resolution"])
        return {"latent_sample": torch.randn(batch, int(model.config.latent_channels), res, res, generator=g)}

    def activation_bytes(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
        b, _, h, w = inputs["latent_sample"].shape
        f = self.scale_factor(model)
        # the last up block works at full resolution with the first channel width: a few maps of that size
        return 4 * b * (h * f) * (w * f) * int(model.config.block_out_channels[0]) * 3
