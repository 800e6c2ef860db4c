"""CLIP text encoders (transformers CLIPTextModel / CLIPTextModelWithProjection): token ids -> embeddings.

The exported graph returns what the stock pipelines read: the last hidden state (SD 1.x/2.x), the
penultimate hidden state and the pooled / projected embedding (SDXL, SD3). Token ids are int32 at the
graph's edge (TensorRT and Core ML take no int64 I/O) and widened inside.
"""

from __future__ import annotations

import torch
from torch import nn

from fine_deploy.components.base import Component


class _Graph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(input_ids.long(), output_hidden_states=True)
        pooled = out.text_embeds if hasattr(out, "text_embeds") and out.text_embeds is not None else out.pooler_output
        return out.last_hidden_state, out.hidden_states[-2], pooled


class ClipTextEncoder(Component):
    library = "transformers"
    classes = ("CLIPTextModel", "CLIPTextModelWithProjection")
    role = "text_encoder"
    export_name = "text_encoder"
    coreml_name = "TextEncoder"
    input_names = ("input_ids",)
    output_names = ("last_hidden_state", "penultimate_hidden_state", "pooled")

    def graph(self, model: nn.Module) -> nn.Module:
        return _Graph(model).eval()

    def tokens(self, model: nn.Module) -> int:
        return int(model.config.max_position_embeddings)

    def example_inputs(self, model: nn.Module, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        n = int(shape.get("tokens") or self.tokens(model))
        return {"input_ids": torch.randint(0, int(model.config.vocab_size), (batch, n), generator=g,
                                           dtype=torch.int32)}

    def activation_bytes(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
        c = model.config
        b, n = inputs["input_ids"].shape
        # the feed-forward's hidden activation and the attention scores dominate
        return 4 * b * n * max(int(c.intermediate_size), int(c.num_attention_heads) * n) * 2
