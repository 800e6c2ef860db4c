"""The denoising loop shared by every backend: seeded noise per image, diffusers scheduler steps, guidance."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fine_deploy.sample.denoisers import Denoiser, ModelInfo


def generators(n: int, seed: int) -> list[torch.Generator]:
    """One generator per image, seeded `seed + i`: image i is the same whatever the batch size, and its
    generator then also draws the ancestral (DDPM) noise of its later steps."""
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def initial_noise(info: ModelInfo, gens: list[torch.Generator]) -> torch.Tensor:
    shape = (info.channels, info.resolution, info.resolution)
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


@torch.no_grad()
def denoise(
    denoiser: Denoiser,
    scheduler,
    n: int,
    *,
    steps: int,
    seed: int,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """`n` images in [-1, 1] from `denoiser` with `scheduler` (a fresh diffusers DDIM/DDPM scheduler).

    With class labels and `guidance` ≠ 1 this is classifier-free guidance: ε = ε_∅ + g·(ε_y − ε_∅), the null
    class ∅ being label `num_classes` (the row diffusers' LabelEmbedding keeps for dropped labels).
    """
    info = denoiser.info
    gens = generators(n, seed)
    x = initial_noise(info, gens) * scheduler.init_noise_sigma
    null = None
    if labels is not None and guidance != 1.0:
        null = torch.full_like(labels, int(info.num_classes))
    scheduler.set_timesteps(steps)
    ddim = type(scheduler).__name__ == "DDIMScheduler"
    for t in scheduler.timesteps:
        xin = scheduler.scale_model_input(x, t)
        eps = denoiser(xin, int(t), labels)
        if null is not None:
            eps = _guided(denoiser, xin, int(t), eps, null, guidance)
        kw = {"eta": 0.0} if ddim else {"generator": gens}
        x = scheduler.step(eps, t, x, **kw).prev_sample
        if on_step is not None:
            on_step()
    return x.clamp(-1, 1)


def _guided(denoiser: Denoiser, x: torch.Tensor, t: int, cond: torch.Tensor, null: torch.Tensor,
            scale: float) -> torch.Tensor:
    uncond = denoiser(x, t, null)
    return uncond + scale * (cond - uncond)
