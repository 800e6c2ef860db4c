"""The exported graph's interface: input/output names, dtypes and the fixed inputs parity runs on.

Input names are the backbone's diffusers `forward()` argument names (SDXL's `added_cond_kwargs` and
PixArt's micro-conditions flattened to their own names), in the adapter's order. The timestep is float32
and integer inputs int32, the types TensorRT and Core ML take natively (int64 I/O is cast down or refused
by them); the wrapper widens integers to int64 for the embedding lookups inside the graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fine_deploy.backbones import Adapter

OUTPUT_NAME = "out_sample"  # optimum's name for a diffusion backbone's output


class ExportWrapper(nn.Module):
    """Positional inputs in `names` order -> the backbone's output tensor."""

    def __init__(self, model: nn.Module, names: list[str], adapter: Adapter) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)
        self.adapter = adapter

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        kw = {n: (a.long() if n != "timestep" and not a.is_floating_point() else a)
              for n, a in zip(self.names, args, strict=True)}
        return self.adapter.run(self.model, kw)


def export_inputs(adapter: Adapter, config: dict[str, Any], batch: int = 1, resolution: int | None = None,
                  seed: int = 0, tokens: int | None = None) -> dict[str, torch.Tensor]:
    """Fixed random inputs in the exported dtypes (what export traces with and parity feeds)."""
    x = adapter.example_inputs(config, batch, resolution, seed, tokens)
    return {k: (v.float() if k == "timestep" else v.int() if not v.is_floating_point() else v) for k, v in x.items()}


def input_ranges(adapter: Adapter, config: dict[str, Any]) -> dict[str, list[int]]:
    """Valid [low, high) of integer inputs and timesteps, recorded in the manifest so benchmarks feed legal values."""
    return {s.name: list(s.range) for s in adapter.inputs(config) if s.range is not None}


@torch.no_grad()
def run_torch(model: nn.Module, inputs: dict[str, torch.Tensor], adapter: Adapter) -> torch.Tensor:
    return ExportWrapper(model, list(inputs), adapter).eval()(*inputs.values())
