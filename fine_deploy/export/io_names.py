"""The exported graph's interface: input/output names, dtypes and the fixed inputs parity runs on.

Every format sees the same signature. The timestep is float32 and class labels int32, the types
TensorRT and Core ML take natively (int64 I/O is cast down or refused by them); the wrapper widens
the labels to int64 for the embedding lookup inside the graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fine_deploy.supernet.core import example_inputs

OUTPUT_NAME = "out_sample"  # optimum's name for a diffusion backbone's output


class ExportWrapper(nn.Module):
    """Positional inputs in `names` order -> the backbone's sample tensor."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        kw = dict(zip(self.names, args, strict=True))
        if "class_labels" in kw:
            kw["class_labels"] = kw["class_labels"].long()
        return self.model(**kw, return_dict=False)[0]


def export_inputs(backbone: str, config: dict[str, Any], batch: int = 1, resolution: int | None = None,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Fixed random inputs in the exported dtypes (what export traces with and parity feeds)."""
    x = example_inputs(backbone, config, batch, resolution, seed)
    x["timestep"] = x["timestep"].float()
    if "class_labels" in x:
        x["class_labels"] = x["class_labels"].int()
    return x


def input_ranges(backbone: str, config: dict[str, Any]) -> dict[str, list[int]]:
    """Valid [low, high) of integer inputs, recorded in the manifest so benchmarks feed legal values."""
    out = {"timestep": [0, 1000]}
    if backbone == "DiTTransformer2DModel":
        out["class_labels"] = [0, int(config.get("num_embeds_ada_norm") or 1)]
    return out


@torch.no_grad()
def run_torch(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return ExportWrapper(model, list(inputs)).eval()(*inputs.values())
