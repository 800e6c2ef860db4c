"""The whole pipeline's share of a plan: what the text encoders, VAE decoder and scheduler add to the
denoiser's memory and latency. The knobs change only the denoiser; the other components are fixed costs.

Memory is what is resident at once:
- offload "none" (every component loaded for the whole generation, the stock pipelines' default):
  denoiser + Σ weights of the others + the largest of their activations;
- offload "sequential" (one component loaded at a time, as ml-stable-diffusion's reduce-memory mode and
  diffusers' model CPU offload do): the largest of denoiser and each other component (weights + activations).
Latency per image = each text encoder once + steps × passes × denoiser / batch + the VAE decoder once, where
passes = 2 under classifier-free guidance (the conditional and unconditional branches).
Component latency is the device's roofline (fitted to the LUT where profiled, else the spec sheet) of
the counted FLOPs and weight bytes: an estimate, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fine_deploy.errors import FineDeployError

OFFLOAD = ("none", "sequential")


@dataclass
class PipelineCost:
    pipeline: str  # the stock class
    offload: str
    passes: int  # denoiser passes per step
    components: dict[str, dict[str, Any]] = field(default_factory=dict)  # networks only

    @property
    def fixed_latency_s(self) -> float:
        return sum(c["latency_s"] * c["calls_per_image"] for c in self.components.values())

    def _resident(self, c: dict[str, Any]) -> int:
        return int(c["weight_bytes"] + c["activation_bytes"])

    @property
    def largest_other(self) -> int:
        return max((self._resident(c) for c in self.components.values()), default=0)

    def other_memory(self) -> int:
        """What the other components add to the denoiser's memory when all are resident."""
        if self.offload == "sequential":
            return 0
        return sum(int(c["weight_bytes"]) for c in self.components.values()) + max(
            (int(c["activation_bytes"]) for c in self.components.values()), default=0)

    def total_memory(self, denoiser_bytes: float) -> float:
        if self.offload == "sequential":
            return max(denoiser_bytes, self.largest_other)
        return denoiser_bytes + self.other_memory()

    def denoiser_memory_limit(self, mem_bytes: int) -> int:
        return mem_bytes - self.other_memory()

    def per_image(self, forward_s: float, steps: int, batch: int) -> float:
        return self.fixed_latency_s + forward_s * steps * self.passes / batch

    def to_json(self, denoiser_bytes: float, forward_s: float, steps: int | None, batch: int) -> dict[str, Any]:
        comps = {n: {k: c[k] for k in ("class", "role", "params", "weight_bytes", "activation_bytes", "latency_s",
                                        "calls_per_image", "latency_source")} for n, c in self.components.items()}
        total = self.total_memory(denoiser_bytes) or 1.0
        # all resident: the parts of the total (they sum to 1, the other components' peak activation apart);
        # sequential: each part's own peak against the pipeline's (the largest is 1)
        seq = self.offload == "sequential"
        shares = {n: round((c["weight_bytes"] + (c["activation_bytes"] if seq else 0)) / total, 4)
                  for n, c in comps.items()}
        if not seq:
            shares["activations"] = round(max((c["activation_bytes"] for c in comps.values()), default=0) / total, 4)
        return {
            "class": self.pipeline, "offload": self.offload, "denoiser_passes_per_step": self.passes,
            "components": comps, "memory_bytes": int(round(total)),
            "memory_share": {"denoiser": round(denoiser_bytes / total, 4), **shares},
            "fixed_latency_per_image_s": float(f"{self.fixed_latency_s:.9g}"),
            "latency_per_image_s": float(f"{self.per_image(forward_s, steps, batch):.9g}") if steps else None,
        }


def pipeline_cost(sn: Any, cost: Any, resolution: int, offload: str, guidance: bool = True) -> PipelineCost | None:
    """The fixed costs of a converted pipeline's other networks on `profile` (None: a denoiser alone)."""
    if offload not in OFFLOAD:
        raise FineDeployError(f"--offload {offload!r}: use one of {', '.join(OFFLOAD)}")
    if not sn.components:
        if offload != "none":
            raise FineDeployError("--offload applies to a converted pipeline; this supernet is a denoiser alone "
                                  "(convert a pipeline folder to plan its text encoders and VAE too)")
        return None
    roof = cost.roof  # the LUT's fitted roofline where the device was profiled, else its spec sheet
    latent0 = int(sn.spec.config["sample_size"])
    comps = {}
    for name, c in sn.components.items():
        if "flops" not in c:
            continue  # tokenizer, scheduler
        area = (resolution / latent0) ** 2 if c["role"] == "vae" else 1.0  # the VAE decodes the latents' area
        flops, act = c["flops"] * area, int(c["activation_bytes"] * area)
        seconds = roof.seconds(flops, c["weight_bytes"] + act)
        comps[name] = {**c, "activation_bytes": act, "latency_s": float(f"{seconds:.9g}"),
                       "calls_per_image": (2 if guidance else 1) if c["role"] == "text_encoder" else 1,
                       "latency_source": f"{roof.source} roofline of counted FLOPs ({cost.profile.name}, {cost.dtype})"}
    return PipelineCost(sn.spec.pipeline["class"], offload, 2 if guidance else 1, comps)
