"""PixArtTransformer2DModel: PixArt-α/Σ, a DiT with adaLN-single and cross-attention to T5 embeddings."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fine_deploy.backbones.base import Adapter, Found, InputSpec, attention_matrices, single

TEXT_TOKENS = 120  # PixArt-α's T5 context length


class PixArtAdapter(Adapter):
    class_name = "PixArtTransformer2DModel"
    component = "transformer"
    sample_input = "hidden_states"
    conditioning = "text"
    latent = True
    depth_stack = "transformer_blocks"
    pipeline = "PixArtAlphaPipeline"
    components = ("text_encoder", "tokenizer", "vae", "scheduler")

    def matrices(self, model: nn.Module) -> list[Found]:
        out: list[Found] = []
        for i in range(len(model.transformer_blocks)):
            p = f"transformer_blocks.{i}"
            out += attention_matrices(model, f"{p}.attn1", base=p)
            out += attention_matrices(model, f"{p}.attn2", base=p)
            out += [single(model, "fc1", f"{p}.ff.net.0.proj", f"{p}.fc1"),
                    single(model, "fc2", f"{p}.ff.net.2", f"{p}.fc2")]
        return out

    def knob_notes(self) -> dict[str, str]:
        return {"rank": "every factorised type", "depth": "num_layers (σ interpolated along depth)",
                "width": "none: one hidden width for every block (adaLN-single's table is shared by all)",
                "resolution": "any multiple of the patch size up to 4x sample_size (one export per size)"}

    def resolution_options(self, config: dict[str, Any]) -> tuple[list[int] | None, str, int, int]:
        # PixArt's patch embedding recomputes its sin-cos table for other sizes (its aspect-ratio buckets)
        return self.strided_resolutions(config, int(config["patch_size"]))

    def _additional(self, config: dict[str, Any]) -> bool:
        extra = config.get("use_additional_conditions")
        return bool(extra) if extra is not None else config["sample_size"] == 128

    def inputs(self, config: dict[str, Any], batch: int = 1, resolution: int | None = None,
               tokens: int | None = None) -> list[InputSpec]:
        res = int(resolution or config["sample_size"])
        out = [InputSpec("hidden_states", (batch, config["in_channels"], res, res), "float32"),
               InputSpec("encoder_hidden_states", (batch, tokens or TEXT_TOKENS, int(config["caption_channels"])),
                         "float32"),
               InputSpec("timestep", (batch,), "int64", (0, 1000))]
        if self._additional(config):  # PixArt-α 1024: image size and aspect ratio micro-conditions
            out += [InputSpec("resolution", (batch, 2), "float32"), InputSpec("aspect_ratio", (batch, 1), "float32")]
        return out

    def example_inputs(self, config, batch=1, resolution=None, seed=0, tokens=None):
        x = super().example_inputs(config, batch, resolution, seed, tokens)
        if "resolution" in x:  # plausible micro-conditions, not noise
            px = 8 * int(resolution or config["sample_size"])
            x["resolution"] = torch.full((batch, 2), float(px))
            x["aspect_ratio"] = torch.ones(batch, 1)
        return x

    def forward_kwargs(self, x, t, cond):
        cond = dict(cond or {})
        added = {"resolution": cond.pop("resolution", None), "aspect_ratio": cond.pop("aspect_ratio", None)}
        return {"hidden_states": x, "timestep": t, "added_cond_kwargs": added, **cond}
