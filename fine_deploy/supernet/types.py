"""Which weights of a diffusers backbone share learngenes (FINE "types"), and which stay dense.

A type is a set of equal-shape weight matrices W_l (m1 x m2; conv weights as out x in*kh*kw) that share
one pair of bases U_t, V_t. A matrix may be the row-wise stack of several modules (the fused qkv of an
attention block), so each matrix lists its parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from fine_deploy.errors import FineDeployError

SUPPORTED_BACKBONES = ("DiTTransformer2DModel", "UNet2DModel")


@dataclass(frozen=True)
class Part:
    module: str  # dotted path of an nn.Linear / nn.Conv2d in the backbone
    rows: tuple[int, int]  # [start, stop) of this module's rows inside the stacked matrix


@dataclass(frozen=True)
class Matrix:
    name: str  # names this layer's sigma tensor: "sigma.<name>"
    parts: tuple[Part, ...]


@dataclass
class WeightType:
    name: str
    kind: str  # "linear" | "conv"
    m1: int
    m2: int
    kernel_size: tuple[int, int] | None
    matrices: list[Matrix] = field(default_factory=list)

    @property
    def layers(self) -> int:
        return len(self.matrices)

    def exact_rank(self) -> int:
        return self.layers * min(self.m1, self.m2)


def _module_matrix_shape(mod: nn.Module) -> tuple[str, int, int, tuple[int, int] | None]:
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise FineDeployError(f"grouped conv {mod} cannot be factorised; keep it dense")
        out, cin, kh, kw = mod.weight.shape
        return "conv", out, cin * kh * kw, (kh, kw)
    if isinstance(mod, nn.Linear):
        out, cin = mod.weight.shape
        return "linear", out, cin, None
    raise TypeError(f"not a linear/conv module: {type(mod).__name__}")


def _stack(model: nn.Module, name: str, modules: list[str]) -> tuple[Matrix, tuple]:
    parts, start, sig = [], 0, None
    for path in modules:
        kind, m1, m2, ks = _module_matrix_shape(model.get_submodule(path))
        s = (kind, m2, ks)
        if sig is not None and s != sig:
            raise ValueError(f"cannot stack {modules}: parts differ in input shape")
        sig = s
        parts.append(Part(path, (start, start + m1)))
        start += m1
    return Matrix(name, tuple(parts)), (sig[0], start, sig[1], sig[2])


def _dit_matrices(model: nn.Module) -> list[tuple[str, Matrix, tuple]]:
    out = []
    for i, _ in enumerate(model.transformer_blocks):
        p = f"transformer_blocks.{i}"
        roles = {
            "qkv": [f"{p}.attn1.to_q", f"{p}.attn1.to_k", f"{p}.attn1.to_v"],
            "attn_out": [f"{p}.attn1.to_out.0"],
            "fc1": [f"{p}.ff.net.0.proj"],
            "fc2": [f"{p}.ff.net.2"],
            "adaln": [f"{p}.norm1.linear"],
        }
        for role, mods in roles.items():
            m, shape = _stack(model, f"{p}.{role}", mods)
            out.append((role, m, shape))
    return out


_UNET_ROLE = [
    (re.compile(r"resnets\.\d+\.conv1$"), "conv1"),
    (re.compile(r"resnets\.\d+\.conv2$"), "conv2"),
    (re.compile(r"resnets\.\d+\.time_emb_proj$"), "temb"),
    (re.compile(r"resnets\.\d+\.conv_shortcut$"), "shortcut"),
    (re.compile(r"attentions\.\d+\.to_out\.0$"), "attn_out"),
    (re.compile(r"downsamplers\.\d+\.conv$"), "downsample"),
    (re.compile(r"upsamplers\.\d+\.conv$"), "upsample"),
]


def _unet_stage(path: str) -> str:
    head = path.split(".")
    if head[0] == "mid_block":
        return "mid"
    if len(head) > 1 and head[0] in ("down_blocks", "up_blocks"):
        return f"{head[0][:-7]}{head[1]}"
    return ""


def _unet_matrices(model: nn.Module) -> list[tuple[str, Matrix, tuple]]:
    out = []
    for path, mod in model.named_modules():
        stage = _unet_stage(path)
        if not stage:
            continue
        if path.endswith(".to_q"):
            base = path[: -len(".to_q")]
            m, shape = _stack(model, f"{base}.qkv", [f"{base}.to_q", f"{base}.to_k", f"{base}.to_v"])
            out.append((f"{stage}.qkv", m, shape))
            continue
        for pat, role in _UNET_ROLE:
            if pat.search(path) and isinstance(mod, nn.Linear | nn.Conv2d):
                m, shape = _stack(model, path, [path])
                out.append((f"{stage}.{role}", m, shape))
    return out


def find_types(model: nn.Module) -> list[WeightType]:
    """Group the backbone's weight matrices into types; equal role but different shape splits a type."""
    cls = type(model).__name__
    if cls == "DiTTransformer2DModel":
        found = _dit_matrices(model)
    elif cls == "UNet2DModel":
        found = _unet_matrices(model)
    else:
        raise FineDeployError(
            f"backbone {cls} is not supported; supported: {', '.join(SUPPORTED_BACKBONES)}"
        )
    by_role: dict[str, dict[tuple, list[Matrix]]] = {}
    for role, m, shape in found:
        by_role.setdefault(role, {}).setdefault(shape, []).append(m)
    types = []
    for role, shapes in by_role.items():
        for (kind, m1, m2, ks), mats in shapes.items():
            name = role if len(shapes) == 1 else f"{role}_{m1}x{m2}"
            types.append(WeightType(name, kind, m1, m2, ks, mats))
    return types


def dense_parameters(model: nn.Module, types: list[WeightType]) -> list[str]:
    """Names of every parameter that is not a factorised weight (biases of factorised layers included)."""
    factorised = {f"{p.module}.weight" for t in types for m in t.matrices for p in m.parts}
    return [n for n, _ in model.named_parameters() if n not in factorised]
