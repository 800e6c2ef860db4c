"""Class-conditional pixel-space DiT pipeline — copied as `pipeline.py` into exported DiT pipeline folders.

Its loop repeats `fine_deploy.sample.loop.denoise` on purpose: an exported folder must run with torch and
diffusers alone. tests/test_export_pipeline.py checks that both give the same images for the same noise.

diffusers' own DiTPipeline decodes latents through a VAE; fine-deploy's DiTs denoise pixels directly, so
their pipeline folders carry this file and name it in model_index.json (`["pipeline", "PixelDiTPipeline"]`),
which stock `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads. It imports only torch
and diffusers: the folder works without fine-deploy installed.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, ImagePipelineOutput


class PixelDiTPipeline(DiffusionPipeline):
    """DDIM sampling of a class-conditional DiTTransformer2DModel in pixel space, with classifier-free guidance.

    The null (unconditional) class is `num_embeds_ada_norm`, the row diffusers' label embedding keeps for
    dropped labels. Like DDIMPipeline, any DDPM/DDIM scheduler config given is run as DDIM.
    """

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer, scheduler) -> None:
        super().__init__()
        scheduler = DDIMScheduler.from_config(scheduler.config)
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, class_labels=None, batch_size: int = 1, num_inference_steps: int = 50,
                 guidance_scale: float = 1.0, eta: float = 0.0, generator=None, output_type: str = "pil",
                 return_dict: bool = True):
        cfg = self.transformer.config
        if class_labels is None:
            class_labels = [i % cfg.num_embeds_ada_norm for i in range(batch_size)]
        labels = torch.as_tensor(class_labels, device=self.device).reshape(-1).long()
        n = len(labels)
        shape = (n, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        dtype = self.transformer.dtype
        if isinstance(generator, list):
            x = torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype) for g in generator]).to(self.device)
        else:
            x = torch.randn(shape, generator=generator, dtype=dtype).to(self.device)
        null = torch.full_like(labels, cfg.num_embeds_ada_norm)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            tt = torch.full((n,), int(t), device=self.device, dtype=torch.long)
            eps = self.transformer(x, timestep=tt, class_labels=labels).sample
            if guidance_scale != 1.0:
                uncond = self.transformer(x, timestep=tt, class_labels=null).sample
                eps = uncond + guidance_scale * (eps - uncond)
            eps = eps[:, : cfg.in_channels]  # learned-variance models append their variance channels
            x = self.scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
        image = (x / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            out = image
        else:
            out = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                out = self.numpy_to_pil(out)
        if not return_dict:
            return (out,)
        return ImagePipelineOutput(images=out)
