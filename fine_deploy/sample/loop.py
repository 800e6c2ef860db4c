"""The one sampler: seeded noise per image, diffusers scheduler steps (DDIM / DDPM / flow-matching Euler),
classifier-free guidance over class labels or text embeddings, whatever backend runs the network."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fine_deploy.sample.denoisers import Denoiser, ModelInfo, TorchDenoiser


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
    cond: dict[str, torch.Tensor] | None = None,
    guidance: float = 1.0,
    null: dict[str, torch.Tensor] | None = None,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """`n` samples from `denoiser` with `scheduler` (a fresh diffusers DDIM / DDPM / FlowMatchEuler scheduler);
    images in [-1, 1] for a pixel model, latents for a latent one.

    `cond` holds the conditioning inputs per image (class_labels, or text embeddings and their extras). With
    `guidance` ≠ 1 this is classifier-free guidance: pred = pred_∅ + g·(pred_c − pred_∅), ∅ being
    `null` (a pipeline's encoded negative prompt) or else `ModelInfo.null` of the condition (the null class row
    of diffusers' LabelEmbedding, zero text embeddings).
    The prediction type (ε, v, flow velocity) is the scheduler's to interpret.
    """
    info = denoiser.info
    gens = generators(n, seed)
    x = initial_noise(info, gens) * getattr(scheduler, "init_noise_sigma", 1.0)
    null = (null if null is not None else info.null(cond)) if cond and guidance != 1.0 else None
    scheduler.set_timesteps(steps)
    name = type(scheduler).__name__
    for t in scheduler.timesteps:
        xin = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        pred = denoiser(xin, float(t), cond)
        if null is not None:
            uncond = denoiser(xin, float(t), null)
            pred = uncond + guidance * (pred - uncond)
        kw = {"eta": 0.0} if name == "DDIMScheduler" else {"generator": gens} if name == "DDPMScheduler" else {}
        x = scheduler.step(pred, t, x, **kw).prev_sample
        if on_step is not None:
            on_step()
    return x.clamp(-1, 1) if not info.latent else x


def sample_model(model: torch.nn.Module, scheduler_config: dict, n: int, *, steps: int = 50,
                 labels: torch.Tensor | None = None, guidance: float = 1.0, seed: int = 0) -> torch.Tensor:
    """`n` DDIM (flow: Euler) samples of a stock diffusers backbone in PyTorch, class-conditional with `labels`."""
    from fine_deploy.supernet.schedule import make_scheduler

    info = ModelInfo.from_config(type(model).__name__, dict(model.config))
    cond = None if labels is None else {"class_labels": labels}
    return denoise(TorchDenoiser(model, info), make_scheduler(dict(scheduler_config), "ddim"), n, steps=steps,
                   seed=seed, cond=cond, guidance=guidance)
