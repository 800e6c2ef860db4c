"""DiTTransformer2DModel: class-conditional DiT (adaLN-Zero), FINE's own backbone."""

from __future__ import annotations

from typing import Any

from torch import nn

from fine_deploy.backbones.base import Adapter, Found, InputSpec, attention_matrices, single


class DiTAdapter(Adapter):
    class_name = "DiTTransformer2DModel"
    component = "transformer"
    sample_input = "hidden_states"
    conditioning = "class"
    depth_stack = "transformer_blocks"

    def matrices(self, model: nn.Module) -> list[Found]:
        out: list[Found] = []
        for i in range(len(model.transformer_blocks)):
            p = f"transformer_blocks.{i}"
            out += attention_matrices(model, f"{p}.attn1", base=p)
            out += [single(model, "fc1", f"{p}.ff.net.0.proj", f"{p}.fc1"),
                    single(model, "fc2", f"{p}.ff.net.2", f"{p}.fc2"),
                    single(model, "adaln", f"{p}.norm1.linear", f"{p}.adaln")]
        return out

    def knob_notes(self) -> dict[str, str]:
        return {"rank": "every factorised type", "depth": "num_layers (σ interpolated along depth)",
                "width": "none: a stock DiT config has one hidden width for every block, so no block can be "
                         "narrowed alone and the patch/label embeddings fix the global one"}

    def num_classes(self, config: dict[str, Any]) -> int | None:
        n = config.get("num_embeds_ada_norm")
        return int(n) if n else None

    def inputs(self, config: dict[str, Any], batch: int = 1, resolution: int | None = None,
               tokens: int | None = None) -> list[InputSpec]:
        res = int(resolution or config["sample_size"])
        return [InputSpec("hidden_states", (batch, config["in_channels"], res, res), "float32"),
                InputSpec("timestep", (batch,), "int64", (0, 1000)),
                InputSpec("class_labels", (batch,), "int64", (0, self.num_classes(config) or 1))]

    # pixel-space DiT: no stock pipeline (DiTPipeline decodes with a VAE); diffusers exports ship this one
    pipeline_file = "dit_pipeline.py"

    def model_index(self) -> dict[str, Any] | None:
        return {"_class_name": ["pipeline", "PixelDiTPipeline"], self.component: ["diffusers", self.class_name],
                "scheduler": ["diffusers", "DDPMScheduler"]}
