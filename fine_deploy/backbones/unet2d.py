"""UNet2DModel: the unconditional (or class-embedded) pixel-space DDPM UNet; OFA-Diffusion's width knob."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from fine_deploy.backbones.base import Adapter, Found, InputSpec, stack

# the stage of a module path: "down0", "mid", "up1" (modules outside the stages stay dense)
_STAGE = re.compile(r"^(?:(down|up)_blocks\.(\d+)|(mid)_block)\.")
_ROLE = [
    (re.compile(r"resnets\.\d+\.conv1$"), "conv1"),
    (re.compile(r"resnets\.\d+\.conv2$"), "conv2"),
    (re.compile(r"resnets\.\d+\.time_emb_proj$"), "temb"),
    (re.compile(r"resnets\.\d+\.conv_shortcut$"), "shortcut"),
    (re.compile(r"downsamplers\.\d+\.conv$"), "downsample"),
    (re.compile(r"upsamplers\.\d+\.conv$"), "upsample"),
]
ALLOCATION_SIZES = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def unet_stage(path: str) -> str:
    m = _STAGE.match(path)
    if not m:
        return ""
    return "mid" if m.group(3) else f"{m.group(1)}{m.group(2)}"


def resnet_matrices(model: nn.Module, path: str, mod: nn.Module, stage: str) -> list[Found]:
    """Convolutions and time projections of resnets and resamplers, typed per (stage, role)."""
    if not isinstance(mod, nn.Linear | nn.Conv2d):
        return []
    for pat, role in _ROLE:
        if pat.search(path):
            m, shape = stack(model, path, [path])
            return [(f"{stage}.{role}", m, shape)]
    return []


class StagedUNet(Adapter):
    """What the diffusers UNets share: modules typed per (stage, role), and sides in multiples of the total
    down-sampling. Subclasses say which modules of a stage are attention (`attention_at`)."""

    component = "unet"
    sample_input = "sample"

    def attention_at(self, model: nn.Module, path: str, stage: str) -> list[Found] | None:
        """The matrices of an attention module at `path`; None where `path` is no attention module."""
        raise NotImplementedError

    def matrices(self, model: nn.Module) -> list[Found]:
        out: list[Found] = []
        for path, mod in model.named_modules():
            stage = unet_stage(path)
            if not stage:
                continue
            found = self.attention_at(model, path, stage)
            out += found if found is not None else resnet_matrices(model, path, mod, stage)
        return out

    def resolution_options(self, config: dict[str, Any]) -> tuple[list[int] | None, str, int, int]:
        return self.strided_resolutions(config, 2 ** (len(config["block_out_channels"]) - 1))


class UNet2DAdapter(StagedUNet):
    class_name = "UNet2DModel"
    pipeline = "DDIMPipeline"
    width_knob = True

    def attention_at(self, model: nn.Module, path: str, stage: str) -> list[Found] | None:
        if path.endswith(".to_q"):
            base = path[: -len(".to_q")]
            m, shape = stack(model, f"{base}.qkv", [f"{base}.to_q", f"{base}.to_k", f"{base}.to_v"])
            return [(f"{stage}.qkv", m, shape)]
        if re.search(r"attentions\.\d+\.to_out\.0$", path):
            m, shape = stack(model, path, [path])
            return [(f"{stage}.attn_out", m, shape)]
        return None

    def knob_notes(self) -> dict[str, str]:
        return {"rank": "every factorised type", "width": "block_out_channels of stages ≥ 1 (OFA-Diffusion orders)",
                "depth": "none: layers_per_block is one value for every stage and sets the skip connections"}

    def inputs(self, config: dict[str, Any], batch: int = 1, resolution: int | None = None,
               tokens: int | None = None) -> list[InputSpec]:
        res = int(resolution or config["sample_size"])
        return [InputSpec("sample", (batch, config["in_channels"], res, res), "float32"),
                InputSpec("timestep", (batch,), "int64", (0, 1000))]

    def width_section(self, model: nn.Module, calib: torch.Tensor | None, *, sizes=ALLOCATION_SIZES,
                      samples: int = 8, p0: float = 0.25, seed: int = 0) -> dict[str, Any]:
        from fine_deploy.backbones import ofa_unet2d as ofa

        groups = ofa.channel_groups(model)
        imp = ofa.channel_importance(model, groups, calib, n_samples=samples, seed=seed)
        return {
            "knobs": ofa.width_knobs(model),
            "criterion": "gradient" if calib is not None else "magnitude",
            "groups": [asdict(g) for g in groups],
            "importance": {k: [float(x) for x in v] for k, v in imp.items()},
            "orders": ofa.channel_orders(imp),
            "allocations": {f"{p:.2f}": ofa.allocate_widths(model, imp, p, p0=p0) for p in sizes},
        }

    def slice_widths(self, model: nn.Module, widths: dict[str, int], orders: dict[str, list[int]]) -> nn.Module:
        from fine_deploy.backbones.ofa_unet2d import slice_widths

        return slice_widths(model, widths, orders)

    def width_index_map(self, model: nn.Module, widths: dict[str, int],
                        orders: dict[str, list[int]]) -> dict[str, dict[int, torch.Tensor]]:
        from fine_deploy.backbones.ofa_unet2d import width_index_map

        return width_index_map(model, widths, orders)

    def check_widths(self, model: nn.Module, widths: dict[str, int]) -> list[int]:
        from fine_deploy.backbones.ofa_unet2d import check_widths

        return check_widths(model, widths)

    def model_index(self) -> dict[str, Any] | None:
        return {"_class_name": "DDIMPipeline", "unet": ["diffusers", self.class_name],
                "scheduler": ["diffusers", "DDPMScheduler"]}
