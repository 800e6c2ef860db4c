"""A pipeline component other than the denoiser (text encoder, VAE decoder, tokenizer), as fine-deploy
exports and runs it: what it is loaded with, the graph it is exported as (names, shapes), and what one
call costs. One subclass per library class, registered by class name in `fine_deploy.components`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fine_deploy.errors import FineDeployError


class Component:
    """A component of a stock diffusers pipeline, by its library and class name (model_index.json)."""

    library: ClassVar[str]  # "transformers" | "diffusers"
    classes: ClassVar[tuple[str, ...]]
    role: ClassVar[str]  # "text_encoder" | "vae" | "tokenizer" | "scheduler"
    export_name: ClassVar[str | None] = None  # the exported graph's folder name (None: not a network)
    coreml_name: ClassVar[str | None] = None  # ml-stable-diffusion's package name
    input_names: ClassVar[tuple[str, ...]] = ()
    output_names: ClassVar[tuple[str, ...]] = ()

    def model_class(self, class_name: str) -> type:
        import importlib

        return getattr(importlib.import_module(self.library), class_name)

    def load(self, folder: Path, class_name: str) -> nn.Module:
        """The network from its folder, from safetensors only (a pickled .bin is refused, never unpickled)."""
        if not any(folder.glob("*.safetensors")):
            raise FineDeployError(f"{folder}: no .safetensors weights (pickled .bin weights are not read); "
                                  "re-save the component with save_pretrained(safe_serialization=True)")
        quiet()
        try:
            return self.model_class(class_name).from_pretrained(str(folder), use_safetensors=True).eval()
        except (OSError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FineDeployError(f"{folder}: {self.library} could not load {class_name} ({first})") from None

    def graph(self, model: nn.Module) -> nn.Module:
        """A module whose positional inputs are `input_names` and outputs `output_names` (what is exported)."""
        raise NotImplementedError

    def example_inputs(self, model: nn.Module, batch: int, **shape: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def run(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.graph(model)(*inputs.values())
        out = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.output_names, out, strict=True))

    def describe(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Parameters, weight bytes (fp32), FLOPs and activation bytes of one call on `inputs` (counted, not timed)."""
        from torch.utils.flop_counter import FlopCounterMode

        params = self.deployed_params(model)
        with FlopCounterMode(display=False) as fc:
            out = self.run(model, inputs)
        io_bytes = sum(v.numel() * v.element_size() for v in [*inputs.values(), *out.values()])
        return {"params": int(params), "weight_bytes": int(4 * params), "flops": int(fc.get_total_flops()),
                "activation_bytes": int(self.activation_bytes(model, inputs) + io_bytes)}

    def deployed(self, model: nn.Module) -> nn.Module:
        """The part of the network the exported graph holds (a VAE decoder leaves the encoder behind)."""
        return model

    def deployed_params(self, model: nn.Module) -> int:
        return sum(p.numel() for p in self.deployed(model).parameters())

    def activation_bytes(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
        """The largest intermediate tensors alive at once during one call (an estimate, fp32)."""
        return 0


class Carried(Component):
    """A component that is not a network (tokenizer, scheduler): carried as files, never exported as a graph."""


def quiet() -> None:
    """transformers' weight-loading bar would break fine-deploy's own progress lines."""
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
    except ImportError:
        pass
