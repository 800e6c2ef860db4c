"""Sampling through diffusers pipelines: DDIMPipeline for a UNet2DModel, a small DiffusionPipeline for DiT.

diffusers' own DiTPipeline decodes latents with a VAE; the supernets here denoise pixels directly,
so class-conditional DiT sampling uses `ClassConditionalPipeline`, a DiffusionPipeline with the same
loop as DDIMPipeline plus class labels and classifier-free guidance (the null class is id
`num_embeds_ada_norm`, the row diffusers' LabelEmbedding reserves for dropped labels).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMPipeline, DDIMScheduler, DiffusionPipeline
from torch import nn


class ClassConditionalPipeline(DiffusionPipeline):
    def __init__(self, transformer: nn.Module, scheduler: DDIMScheduler) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, class_labels: torch.Tensor, num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.transformer.config
        n = len(class_labels)
        x = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator)
        null = torch.full_like(class_labels, cfg.num_embeds_ada_norm)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            tt = torch.full((n,), int(t), dtype=torch.long)
            if guidance_scale != 1.0:
                both = self.transformer(torch.cat([x, x]), timestep=torch.cat([tt, tt]),
                                        class_labels=torch.cat([class_labels, null])).sample
                cond, uncond = both.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
            else:
                eps = self.transformer(x, timestep=tt, class_labels=class_labels).sample
            x = self.scheduler.step(eps, t, x, eta=0.0).prev_sample
        return x.clamp(-1, 1)


@torch.no_grad()
def sample(model: nn.Module, scheduler_config: dict[str, Any], n: int, *, steps: int = 50,
           labels: torch.Tensor | None = None, guidance_scale: float = 1.0, seed: int = 0,
           batch: int = 250) -> torch.Tensor:
    """`n` DDIM samples in [-1, 1] from a stock diffusers backbone (class-conditional when `labels`)."""
    scheduler = DDIMScheduler.from_config(dict(scheduler_config))
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        k = min(batch, n - i)
        if type(model).__name__ == "DiTTransformer2DModel":
            if labels is None:
                labels = torch.zeros(n, dtype=torch.long)
            pipe = ClassConditionalPipeline(model, scheduler)
            pipe.set_progress_bar_config(disable=True)
            out.append(pipe(labels[i:i + k], steps, guidance_scale, g))
        else:
            pipe = DDIMPipeline(model, scheduler)
            pipe.set_progress_bar_config(disable=True)
            img = pipe(batch_size=k, generator=g, num_inference_steps=steps, output_type="pt").images
            out.append(torch.as_tensor(img) * 2 - 1)
    return torch.cat(out)
