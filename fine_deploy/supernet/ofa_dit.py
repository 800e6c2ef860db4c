"""OFA-Diffusion channel orders for diffusers ``DiTTransformer2DModel`` (orders only, no diffusers slicing).

No width of a stock ``DiTTransformer2DModel`` config can be cut as a slice, so there is no DiT
counterpart of ``ofa.slice_widths``:

- The only width fields are ``num_attention_heads`` and ``attention_head_dim``, and both set
  ``inner_dim = heads * head_dim``, which is also the residual stream width. The residual width is not
  sliceable: ``PatchEmbed``'s sincos position embedding is a non-persistent buffer recomputed from the
  width at construction (its frequencies ``10000 ** (-i / (D/4))`` change with D, so the narrower table
  is not the kept columns of the wider one), and every ``LayerNorm`` (elementwise_affine=False) takes its
  statistics over the whole width.
- The MLP hidden width is ``4 * inner_dim`` inside ``BasicTransformerBlock``; the DiT config has no
  ``ff_inner_dim``, so it cannot shrink on its own.
- ``attention_head_dim`` also sets the softmax scale ``head_dim ** -0.5``, so a config with narrower heads
  is not the same function as keeping some within-head offsets.

What *can* shrink is the inside of each block's two pipes, which an exporter (ONNX) can express
directly: the MLP hidden (``ff.net.0.proj`` out -> ``ff.net.2`` in) and the attention inner dim
(``attn1.to_q/to_k/to_v`` out -> ``attn1.to_out.0`` in). Following OFA-Diffusion, attention keeps its head
count and drops within-head offsets: a channel's score is its offset's total over all heads, and an order
lists channels so that keeping its first ``k * heads`` keeps the same k offsets in every head (the
exporter must keep the original softmax scale).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.ofa import ChannelGroup, ChannelMember, _param_axes, dependency_groups

_PIPE_ROOT = re.compile(r"transformer_blocks\.\d+\.(ff\.net\.0\.proj|attn1\.to_[qkv])")


def _check_dit(model: nn.Module) -> None:
    if not hasattr(model, "transformer_blocks") or not hasattr(getattr(model, "config", None), "patch_size"):
        raise FineDeployError(f"{type(model).__name__} is not a diffusers DiTTransformer2DModel")


def dit_channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The MLP-hidden and attention-inner pipes of every DiT block, found with torch-pruning."""
    _check_dit(model)
    cfg = model.config
    example = {
        "hidden_states": torch.zeros(1, cfg.in_channels, cfg.sample_size, cfg.sample_size),
        "timestep": torch.tensor([1]),
        "class_labels": torch.tensor([0]),
    }
    modules = dict(model.named_modules())
    groups = []
    for root, items in dependency_groups(model, example, root_types=(nn.Linear,)):
        if not _PIPE_ROOT.fullmatch(root):
            continue
        members, size = [], None
        for name, is_input, offset, roots in items:
            if offset != 0 or roots != list(range(len(roots))):
                raise FineDeployError(f"unexpected channel mapping at {name}; DiT orders cannot cover it")
            size = len(roots) if size is None else size
            for pname, dim in _param_axes(modules[name], out_side=not is_input):
                members.append(ChannelMember(f"{name}.{pname}", dim, 0, 0))
        is_attn = ".attn1." in root
        unit = cfg.attention_head_dim if is_attn else 1
        groups.append(ChannelGroup(root, 0, int(size), int(unit), tuple(members), "strided"))
    groups.sort(key=lambda g: (int(g.key.split(".")[1]), g.key))
    return groups


def dit_channel_orders(
    model: nn.Module, calib: torch.Tensor | None = None, *, n_samples: int = 8, seed: int = 0
) -> dict[str, list[int]]:
    """Most-important-first channel orders of every DiT pipe (magnitude, or gradient with ``calib``).

    ``calib`` holds latents [N, in_channels, H, W]; class labels are drawn at random.
    """
    from fine_deploy.supernet.ofa import channel_importance, channel_orders

    groups = dit_channel_groups(model)
    return channel_orders(channel_importance(model, groups, calib, n_samples=n_samples, seed=seed))


def head_offset_order(order: list[int], head_dim: int) -> list[int]:
    """The within-head offsets of an attention pipe's order, most important first."""
    seen: list[int] = []
    for c in order:
        if c % head_dim not in seen:
            seen.append(c % head_dim)
    return seen
