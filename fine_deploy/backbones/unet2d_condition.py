"""UNet2DConditionModel: Stable Diffusion 1.x / 2.x and SDXL's latent UNet, conditioned on text embeddings.

Self-attention q/k/v read the image tokens and are stacked into one matrix; cross-attention q reads the
image tokens while k/v read the text embeddings (another width), so cross q and cross k/v are their own
types. SDXL's added conditions (`text_embeds`, `time_ids`) are separate inputs of the exported graph,
packed into diffusers' `added_cond_kwargs` here.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from fine_deploy.backbones.base import Found, InputSpec, attention_matrices, single
from fine_deploy.backbones.unet2d import StagedUNet

_BLOCK_ATTN = re.compile(r"attentions\.\d+\.transformer_blocks\.\d+\.(attn1|attn2)$")
_PROJ = re.compile(r"attentions\.\d+\.(proj_in|proj_out)$")
_FF = re.compile(r"attentions\.\d+\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$")
TEXT_TOKENS = 77  # CLIP's context length


class UNet2DConditionAdapter(StagedUNet):
    class_name = "UNet2DConditionModel"
    conditioning = "text"
    latent = True
    pipeline = "StableDiffusionPipeline"
    components = ("text_encoder", "tokenizer", "vae", "scheduler")

    def attention_at(self, model: nn.Module, path: str, stage: str) -> list[Found] | None:
        if _BLOCK_ATTN.search(path):
            return attention_matrices(model, path, prefix=f"{stage}.")
        if m := _PROJ.search(path):
            return [single(model, f"{stage}.{m.group(1)}", path)]
        if m := _FF.search(path):
            return [single(model, f"{stage}.{'fc1' if m.group(1) == '0.proj' else 'fc2'}", path)]
        return None

    def knob_notes(self) -> dict[str, str]:
        return {"rank": "every factorised type (self/cross attention, feed-forward, resnet convs)",
                "depth": "none: layers_per_block also sets the skip connections of the up path",
                "width": "none yet: the OFA slicer handles UNet2DModel stages; cross-attention stages are not "
                         "sliced by it"}

    def text_dims(self, config: dict[str, Any]) -> int:
        d = config["cross_attention_dim"]
        return int(d if isinstance(d, int) else d[0])

    def inputs(self, config: dict[str, Any], batch: int = 1, resolution: int | None = None,
               tokens: int | None = None) -> list[InputSpec]:
        res = int(resolution or config["sample_size"])
        out = [InputSpec("sample", (batch, config["in_channels"], res, res), "float32"),
               InputSpec("timestep", (batch,), "int64", (0, 1000)),
               InputSpec("encoder_hidden_states", (batch, tokens or TEXT_TOKENS, self.text_dims(config)), "float32")]
        if config.get("addition_embed_type") == "text_time":  # SDXL
            n_time = 6  # original size, crop top-left, target size
            pooled = int(config["projection_class_embeddings_input_dim"]) - n_time * int(
                config["addition_time_embed_dim"])
            out += [InputSpec("text_embeds", (batch, pooled), "float32"),
                    InputSpec("time_ids", (batch, n_time), "float32")]
        return out

    def forward_kwargs(self, x, t, cond):
        kw = {"sample": x, "timestep": t, **(cond or {})}
        if "text_embeds" in kw:
            kw["added_cond_kwargs"] = {"text_embeds": kw.pop("text_embeds"), "time_ids": kw.pop("time_ids")}
        return kw
