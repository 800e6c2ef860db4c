"""OFA-Diffusion channel orders and width slicing of a stock diffusers ``UNet2DModel``.

A width-sliced subnet must stay a stock ``UNet2DModel`` whose ``config.json`` describes it exactly, so
the only width knob is ``block_out_channels``: one width per stage, shared by ``down_blocks[i]``,
``up_blocks[n-1-i]`` and (last stage) the mid block. Every internal width of a resnet and the attention
inner dim follow it, and attention keeps ``attention_head_dim`` (a global config value that also sets
the softmax scale), so attention loses whole heads rather than shrinking them.

Stage 0 stays whole. ``block_out_channels[0]`` also sets the sinusoid width of ``time_proj`` and
``time_embed_dim = 4 * block_out_channels[0]`` (consumed by every resnet's ``time_emb_proj``). The
sinusoid frequencies are ``10000 ** (-i / (half - freq_shift))``: with ``freq_shift=1`` (the
google/ddpm-* checkpoints) a narrower sinusoid shares only its first and last frequency with the wider
one, so it is not a slice of it; only with ``freq_shift=0`` and a width that divides the original is it a
(strided, not importance-chosen) subset. ``tests/test_ofa.py`` checks both facts.

Coupled channels are found with torch-pruning's ``DependencyGraph`` (no hand-written graph walk); the
slicing itself copies index-selected tensors into a freshly built stock model, which sidesteps
torch-pruning's diffusers gaps (Downsample2D/Upsample2D ``channels``, attention ``heads``).

A coupled group can span two stages: when ``block_out_channels[i-1] == block_out_channels[i]`` the first
resnet of stage i has an identity shortcut, so stage i's residual stream is the same index space as the
tensor that enters it. Each tensor keeps the top-k of the group's one order with its own stage's k; if
the two widths then differ, the stock model grows a 1x1 ``conv_shortcut``, which is filled with the exact
selection matrix. The reverse (a learned shortcut that the new config would drop because the widths
became equal) is not expressible and is refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from fine_deploy.errors import FineDeployError

SUPPORTED_DOWN = ("DownBlock2D", "AttnDownBlock2D")
SUPPORTED_UP = ("UpBlock2D", "AttnUpBlock2D")
SUPPORTED_MID = ("UNetMidBlock2D", None)


@dataclass(frozen=True)
class ChannelMember:
    """One parameter axis of a group: position ``offset + c`` along ``dim`` of ``param`` is channel c."""

    param: str
    dim: int
    offset: int
    stage: int  # the stage whose width this tensor axis follows in a UNet2DModel config


@dataclass(frozen=True)
class ChannelGroup:
    """One set of coupled channels, as torch-pruning's DependencyGraph finds them."""

    key: str  # the producer module that roots the group, e.g. "down_blocks.1.resnets.0.conv1"
    stage: int  # the producer's stage
    size: int
    unit: int  # channels scored together: attention_head_dim for q/k/v -> out pipes, else 1
    members: tuple[ChannelMember, ...]


# --- model checks and knobs --------------------------------------------------------------------------


def _config(model: nn.Module):
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "block_out_channels"):
        raise FineDeployError(
            f"{type(model).__name__} is not a diffusers UNet2DModel; width slicing needs a UNet2DModel"
        )
    return cfg


def _check_supported(model: nn.Module) -> None:
    cfg = _config(model)
    bad = [t for t in cfg.down_block_types if t not in SUPPORTED_DOWN]
    bad += [t for t in cfg.up_block_types if t not in SUPPORTED_UP]
    if cfg.mid_block_type not in SUPPORTED_MID:
        bad.append(cfg.mid_block_type)
    if bad:
        raise FineDeployError(
            f"block type(s) {sorted(set(bad))} are not supported by width slicing; "
            f"use {SUPPORTED_DOWN + SUPPORTED_UP} and UNetMidBlock2D"
        )
    if cfg.resnet_time_scale_shift != "default":
        raise FineDeployError(
            f"resnet_time_scale_shift={cfg.resnet_time_scale_shift!r} is not supported by width slicing; use 'default'"
        )
    if cfg.downsample_type != "conv" or cfg.upsample_type != "conv":
        raise FineDeployError("width slicing supports downsample_type/upsample_type 'conv' only")


def _stage_has_attention(cfg, stage: int) -> bool:
    n = len(cfg.block_out_channels)
    if "Attn" in cfg.down_block_types[stage] or "Attn" in cfg.up_block_types[n - 1 - stage]:
        return True
    return stage == n - 1 and cfg.mid_block_type is not None and cfg.add_attention


def _stage_unit(cfg, stage: int) -> int:
    """Widths of a stage must be multiples of this: GroupNorm groups, and whole heads where it attends."""
    unit = math.lcm(cfg.norm_num_groups, cfg.attn_norm_num_groups or 1)
    if _stage_has_attention(cfg, stage) and cfg.attention_head_dim:
        unit = math.lcm(unit, cfg.attention_head_dim)
    return unit


def _learned_shortcut(cfg, stage: int) -> bool:
    """Whether down_blocks[stage].resnets[0] has a conv_shortcut (its in and out widths differ)."""
    return stage > 0 and cfg.block_out_channels[stage - 1] != cfg.block_out_channels[stage]


def width_knobs(model: nn.Module) -> dict[str, list[int]]:
    """Allowed widths per stage i >= 1 (ascending, full width last) of a UNet2DModel.

    A value is allowed when it is a multiple of the stage's unit and does not make a learned
    shortcut disappear against the fixed stage 0; shortcut clashes between two stages >= 1 depend on
    both choices and are checked by :func:`check_widths`.
    """
    _check_supported(model)
    cfg = _config(model)
    boc = list(cfg.block_out_channels)
    knobs: dict[str, list[int]] = {}
    for i in range(1, len(boc)):
        unit = _stage_unit(cfg, i)
        if boc[i] % unit:
            raise FineDeployError(
                f"block_out_channels[{i}]={boc[i]} is not a multiple of {unit} (norm groups / head dim); "
                "this model cannot be width-sliced"
            )
        values = list(range(unit, boc[i] + 1, unit))
        if i == 1 and _learned_shortcut(cfg, 1):
            values = [v for v in values if v != boc[0]]
        knobs[f"stage{i}"] = values
    return knobs


def full_widths(model: nn.Module) -> dict[str, int]:
    boc = _config(model).block_out_channels
    return {f"stage{i}": int(boc[i]) for i in range(1, len(boc))}


def check_widths(model: nn.Module, widths: dict[str, int]) -> list[int]:
    """Validate ``widths`` and return the new ``block_out_channels`` (missing stages stay full)."""
    knobs = width_knobs(model)
    boc = [int(c) for c in _config(model).block_out_channels]
    new = list(boc)
    for name, value in widths.items():
        m = re.fullmatch(r"stage(\d+)", str(name))
        if m is None or int(m.group(1)) >= len(boc):
            raise FineDeployError(f"unknown stage {name!r}; this model has stages stage0..stage{len(boc) - 1}")
        i = int(m.group(1))
        if i == 0:
            if int(value) != boc[0]:
                raise FineDeployError(
                    f"stage0 width {value} != {boc[0]}: stage 0 sets the timestep embedding and cannot "
                    "be width-sliced; leave stage0 out"
                )
            continue
        if int(value) not in knobs[name]:
            allowed = knobs[name]
            raise FineDeployError(
                f"width {value} is not allowed for {name}; choose one of {allowed[0]}..{allowed[-1]} "
                f"in steps of {_stage_unit(_config(model), i)}"
                + (f" except {boc[0]}" if i == 1 and _learned_shortcut(_config(model), 1) else "")
            )
        new[i] = int(value)
    for i in range(2, len(boc)):
        if _learned_shortcut(_config(model), i) and new[i] == new[i - 1]:
            raise FineDeployError(
                f"stage{i - 1} and stage{i} widths are both {new[i]}, which drops the learned shortcut "
                f"conv of down_blocks.{i}.resnets.0; give stage{i} a different width"
            )
    return new


# --- coupled groups -----------------------------------------------------------------------------------


_INPUT_SIDE = ("norm1", "conv1", "conv_shortcut")


def _member_stage(cfg, module: str, is_input: bool, offset: int) -> int | None:
    """The stage whose width a module axis follows; None for axes that never change (time embedding)."""
    n = len(cfg.block_out_channels)
    parts = module.split(".")
    if parts[-1] == "time_emb_proj" and is_input:
        return None
    if parts[0] == "down_blocks":
        i = int(parts[1])
        if parts[2] == "resnets" and parts[3] == "0" and parts[4] in _INPUT_SIDE and (is_input or parts[4] == "norm1"):
            return max(i - 1, 0)
        return i
    if parts[0] == "mid_block":
        return n - 1
    if parts[0] == "up_blocks":
        j = int(parts[1])
        s = n - 1 - j
        if parts[2] == "resnets" and parts[4] in _INPUT_SIDE and (is_input or parts[4] == "norm1"):
            k, last = int(parts[3]), cfg.layers_per_block
            if offset == 0:  # the running hidden state comes first in the concatenation
                return (n - 1 if j == 0 else s + 1) if k == 0 else s
            return max(s - 1, 0) if k == last else s
        return s
    return 0 if parts[0] in ("conv_in", "conv_norm_out", "conv_out") else None


def _param_axes(module: nn.Module, out_side: bool) -> list[tuple[str, int]]:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        if out_side:
            return [("weight", 0)] + ([("bias", 0)] if module.bias is not None else [])
        return [("weight", 1)]
    if isinstance(module, nn.GroupNorm):
        return [("weight", 0), ("bias", 0)] if module.affine else []
    raise FineDeployError(f"unexpected {type(module).__name__} in a channel group; width slicing cannot cut it")


def _segments(idxs: list[int], root_idxs: list[int]) -> list[tuple[int, list[int]]]:
    """Split one DependencyGraph item into runs where position = offset + root channel."""
    runs: dict[int, list[int]] = {}
    for p, r in zip(idxs, root_idxs, strict=True):
        runs.setdefault(p - r, []).append(r)
    return sorted(runs.items())


def _example_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    cfg = _config(model)
    size = cfg.sample_size or 32
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    inputs = {"sample": torch.zeros(1, cfg.in_channels, h, w), "timestep": torch.tensor([1])}
    if getattr(model, "class_embedding", None) is not None:
        inputs["class_labels"] = torch.zeros(1, dtype=torch.long)
    return inputs


def dependency_groups(
    model: nn.Module,
    example_inputs: dict[str, torch.Tensor],
    root_types: tuple[type, ...] = (nn.Conv2d, nn.Linear),
) -> list[tuple[str, list[tuple[str, bool, int, list[int]]]]]:
    """Coupled groups from torch-pruning: [(root module, [(module, is_input, offset, root ids)])]."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        # torch-pruning traces the graph through autograd: a caller's no_grad would leave it empty
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        names = {m: n for n, m in model.named_modules()}
        out = []
        for group in dg.get_all_groups(root_module_types=root_types):
            root = names[group[0].dep.target.module]
            items = []
            for item in group:
                module = item.dep.target.module
                if module not in names or not any(True for _ in module.parameters(recurse=False)):
                    continue  # operator nodes (add, concat, reshape) and parameterless modules
                handler = getattr(item.dep.handler, "__name__", str(item.dep.handler))
                is_input = handler == "prune_in_channels"
                for offset, roots in _segments(list(item.idxs), list(item.root_idxs)):
                    items.append((names[module], is_input, offset, roots))
            out.append((root, items))
        return out
    finally:
        model.train(was_training)


# Groups depend only on the architecture, and building the graph traces the model (seconds for a real
# UNet), so every model with the same class, config and parameter shapes shares one entry.
_GROUP_CACHE: dict[tuple, list[ChannelGroup]] = {}
_GROUP_CACHE_SIZE = 16


def _signature(model: nn.Module) -> tuple:
    config = json.dumps(
        {k: v for k, v in dict(model.config).items() if not k.startswith("_")}, sort_keys=True, default=str
    )
    shapes = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    return type(model).__name__, config, shapes


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """Every coupled channel group of a UNet2DModel that some stage >= 1 width cuts."""
    _check_supported(model)
    sig = _signature(model)
    if sig in _GROUP_CACHE:
        return _GROUP_CACHE[sig]
    cfg = _config(model)
    modules = dict(model.named_modules())
    groups: list[ChannelGroup] = []
    for root, items in dependency_groups(model, _example_inputs(model)):
        members: list[ChannelMember] = []
        size = None
        for name, is_input, offset, roots in items:
            if roots != list(range(len(roots))):
                raise FineDeployError(f"unexpected channel mapping at {name}; width slicing cannot cut it")
            size = len(roots) if size is None else size
            stage = _member_stage(cfg, name, is_input, offset)
            if stage is None:
                members = []
                break  # time-embedding groups never change width
            for pname, dim in _param_axes(modules[name], out_side=not is_input):
                members.append(ChannelMember(f"{name}.{pname}", dim, offset, stage))
        if not members or all(m.stage == 0 for m in members):
            continue
        is_attn = re.search(r"attentions\.\d+\.to_[qkv]$", root) is not None
        # attention_head_dim=None means one head as wide as the stage: channels go one by one
        unit = (cfg.attention_head_dim or 1) if is_attn else 1
        root_stage = next(m.stage for m in members if m.param.startswith(root + "."))
        groups.append(ChannelGroup(root, root_stage, int(size), int(unit), tuple(members)))
    groups.sort(key=lambda g: g.key)
    if len(_GROUP_CACHE) >= _GROUP_CACHE_SIZE:
        _GROUP_CACHE.pop(next(iter(_GROUP_CACHE)))
    _GROUP_CACHE[sig] = groups
    return groups


# --- importance and orders ----------------------------------------------------------------------------


def _axis_sums(values: dict[str, torch.Tensor], groups: list[ChannelGroup]) -> dict[str, torch.Tensor]:
    """Each group's per-channel sum of a per-element quantity (one reduction per parameter axis)."""
    reduced: dict[tuple[str, int], torch.Tensor] = {}
    out = {}
    for g in groups:
        total = torch.zeros(g.size, dtype=torch.float64)
        for m in g.members:
            key = (m.param, m.dim)
            if key not in reduced:
                t = values[m.param]
                reduced[key] = t.movedim(m.dim, 0).reshape(t.shape[m.dim], -1).sum(dim=1).double().cpu()
            total += reduced[key][m.offset : m.offset + g.size]
        out[g.key] = total
    return out


def _pool_units(scores: torch.Tensor, group: ChannelGroup) -> torch.Tensor:
    """Give every channel of a unit (`unit` consecutive channels: UNet attention loses whole heads) the
    unit's total, so that an order keeps units whole."""
    if group.unit <= 1:
        return scores
    return scores.reshape(-1, group.unit).sum(dim=1).repeat_interleave(group.unit)


def channel_importance(
    model: nn.Module,
    groups: list[ChannelGroup],
    calib: torch.Tensor | None = None,
    *,
    n_samples: int = 8,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Importance per channel of every group (float64, shape [size]).

    Without ``calib``: weight magnitude, the sum of squares of every weight the channel owns. With
    ``calib`` images [N, C, H, W] in [-1, 1]: OFA-Diffusion's ``I_i = 1/N sum_n |sum_j w_ij g_ij^(n)|``
    over ``n_samples`` single-sample DDPM noise-prediction loss gradients.
    """
    params = dict(model.named_parameters())
    if calib is None:
        with torch.no_grad():
            names = {m.param for g in groups for m in g.members}
            sums = _axis_sums({n: params[n].detach() ** 2 for n in names}, groups)
            return {g.key: _pool_units(sums[g.key], g) for g in groups}
    return _gradient_importance(model, groups, calib, n_samples=n_samples, seed=seed)


def _gradient_importance(
    model: nn.Module, groups: list[ChannelGroup], calib: torch.Tensor, *, n_samples: int, seed: int
) -> dict[str, torch.Tensor]:
    from diffusers import DDPMScheduler
    from rich.progress import Progress

    cfg = model.config
    if not isinstance(calib, torch.Tensor) or calib.ndim != 4 or calib.shape[1] != cfg.in_channels:
        shape = tuple(calib.shape) if isinstance(calib, torch.Tensor) else type(calib).__name__
        raise FineDeployError(
            f"calibration images have shape {shape}; expected [N, {cfg.in_channels}, H, W] in [-1, 1]"
        )
    if n_samples < 1:
        raise FineDeployError(f"n_samples={n_samples}; use at least 1 calibration sample")
    scheduler = DDPMScheduler(num_train_timesteps=getattr(cfg, "num_train_timesteps", None) or 1000)
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    names = sorted({m.param for g in groups for m in g.members})
    tensors = [params[n] for n in names]
    totals = {g.key: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()  # dropout off: the gradient of the deterministic loss
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("gradient importance", total=n_samples)
            for n in range(n_samples):
                x0 = calib[n % calib.shape[0]][None].to(device=device, dtype=dtype)
                noise = torch.randn(x0.shape, generator=gen).to(device=device, dtype=dtype)
                t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=gen)
                noisy = scheduler.add_noise(x0, noise, t)
                pred = _predict_noise(model, noisy, t.to(device), gen)
                loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
                grads = dict(zip(names, torch.autograd.grad(loss, tensors), strict=True))
                with torch.no_grad():
                    sums = _axis_sums({n: params[n].detach() * grads[n] for n in names}, groups)
                    for g in groups:
                        totals[g.key] += _pool_units(sums[g.key], g).abs()
                progress.advance(task)
    finally:
        model.train(was_training)
    return {k: v / n_samples for k, v in totals.items()}


def _predict_noise(model: nn.Module, noisy: torch.Tensor, t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The model's noise prediction; class-conditional models get random labels."""
    n_classes = getattr(model.config, "num_embeds_ada_norm", None) or getattr(model.config, "num_class_embeds", None)
    if hasattr(model, "transformer_blocks"):  # DiT
        labels = torch.randint(0, n_classes or 1, (noisy.shape[0],), generator=gen).to(noisy.device)
        out = model(noisy, timestep=t, class_labels=labels).sample
        return out[:, : noisy.shape[1]]  # learned-sigma DiTs predict [noise, variance]
    if getattr(model, "class_embedding", None) is not None:
        labels = torch.randint(0, n_classes or 1, (noisy.shape[0],), generator=gen).to(noisy.device)
        return model(noisy, t, class_labels=labels).sample
    return model(noisy, t).sample


def channel_orders(importance: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Channels of each group, most important first (ties keep the lower index first)."""
    return {
        k: torch.sort(v.detach().double(), descending=True, stable=True).indices.tolist() for k, v in importance.items()
    }


# --- allocation ---------------------------------------------------------------------------------------


def stage_importance(model: nn.Module, importance: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean channel importance of each stage >= 1 over the groups its producers own."""
    groups = channel_groups(model)
    total: dict[int, float] = {}
    count: dict[int, int] = {}
    for g in groups:
        if g.key in importance and g.stage >= 1:
            total[g.stage] = total.get(g.stage, 0.0) + float(importance[g.key].sum())
            count[g.stage] = count.get(g.stage, 0) + g.size
    return {f"stage{s}": total[s] / count[s] for s in sorted(total)}


def allocate_widths(
    model: nn.Module, importance: dict[str, torch.Tensor], size: float, p0: float = 0.25
) -> dict[str, int]:
    """OFA-Diffusion allocation for a size P over the stages >= 1 (one block B of K stages).

    ``C_l = max(min(I_l / sum_B I * K * P * |l|, |l|), p0 * |l|)``, then snapped to the nearest allowed
    width (never below the p0 floor) and nudged off widths that would drop a learned shortcut.
    ``I_l`` is the stage's mean channel importance (:func:`stage_importance`). P = 1 is the whole model:
    the formula alone would shrink below-average stages even there.
    """
    if not 0.0 < float(size) <= 1.0:
        raise FineDeployError(f"size {size} is outside (0, 1]; give the kept fraction, e.g. 0.5")
    if not 0.0 < float(p0) <= 1.0:
        raise FineDeployError(f"p0 {p0} is outside (0, 1]; the default minimum kept fraction is 0.25")
    knobs = width_knobs(model)
    full = full_widths(model)
    if float(size) == 1.0:  # the largest subnet is the whole model, whatever the importance spread
        return full
    imp = stage_importance(model, importance)
    missing = sorted(set(knobs) - set(imp))
    if missing:
        raise FineDeployError(f"no importance for {missing}; compute it with channel_importance on this model")
    k = len(imp)
    mean = sum(imp.values()) / k
    widths: dict[str, int] = {}
    for name, values in knobs.items():
        full_w = full[name]
        share = imp[name] / mean if mean > 0 else 1.0
        target = max(min(share * size * full_w, full_w), p0 * full_w)
        floor = p0 * full_w
        ok = [v for v in values if v >= floor - 1e-9] or [values[-1]]
        widths[name] = min(ok, key=lambda v: (abs(v - target), -v))
    return _resolve_shortcut_clashes(model, widths, knobs)


def _resolve_shortcut_clashes(model: nn.Module, widths: dict[str, int], knobs: dict[str, list[int]]) -> dict[str, int]:
    cfg = _config(model)
    for i in range(2, len(cfg.block_out_channels)):
        name, prev = f"stage{i}", f"stage{i - 1}"
        if _learned_shortcut(cfg, i) and widths[name] == widths[prev]:
            values = knobs[name]
            pos = values.index(widths[name])
            # move toward the stage's full width first: it never breaks the p0 floor
            widths[name] = values[pos + 1] if pos + 1 < len(values) else values[pos - 1]
    check_widths(model, widths)
    return widths


# --- slicing ------------------------------------------------------------------------------------------


def _kept_channels(order: list[int], width: int, size: int) -> torch.Tensor:
    if sorted(order) != list(range(size)):
        raise FineDeployError(f"a channel order is not a permutation of 0..{size - 1}; recompute the orders")
    return torch.tensor(sorted(order[:width]), dtype=torch.long)


def _member_width(group: ChannelGroup, member: ChannelMember, old_boc: list[int], new_boc: list[int]) -> int:
    """A member axis spans the whole stage width (size == old width), so it keeps the new stage width."""
    old = old_boc[member.stage]
    if group.size != old:
        raise FineDeployError(
            f"group {group.key} has {group.size} channels but stage {member.stage} is {old} wide; "
            "this model's layout is not supported by width slicing"
        )
    return new_boc[member.stage]


def width_index_map(
    model: nn.Module, widths: dict[str, int], orders: dict[str, list[int]]
) -> dict[str, dict[int, torch.Tensor]]:
    """For every parameter axis a prunable group owns: the kept positions (ascending) at ``widths``."""
    old_boc = [int(c) for c in _config(model).block_out_channels]
    new_boc = check_widths(model, widths)
    params = dict(model.named_parameters())
    dropped: dict[tuple[str, int], list[torch.Tensor]] = {}
    for g in channel_groups(model):
        if g.key not in orders:
            raise FineDeployError(f"no channel order for group {g.key}; compute orders for this model")
        order = list(orders[g.key])
        for m in g.members:
            keep = set(_kept_channels(order, _member_width(g, m, old_boc, new_boc), g.size).tolist())
            drop = torch.tensor([c for c in range(g.size) if c not in keep], dtype=torch.long) + m.offset
            dropped.setdefault((m.param, m.dim), []).append(drop)
    out: dict[str, dict[int, torch.Tensor]] = {}
    for (pname, dim), drops in sorted(dropped.items()):
        n = params[pname].shape[dim]
        mask = torch.ones(n, dtype=torch.bool)
        for d in drops:
            mask[d] = False
        out.setdefault(pname, {})[dim] = torch.nonzero(mask).flatten()
    return out


def width_new_tensors(
    model: nn.Module, widths: dict[str, int], orders: dict[str, list[int]]
) -> dict[str, torch.Tensor]:
    """Tensors that only the sliced config has: 1x1 ``conv_shortcut``s of first resnets whose in and out
    widths were equal and now differ, as exact 0/1 selections (bias zero) between the kept channels.

    :func:`width_index_map` plus these give the sliced state dict for any weights laid out like ``model``.
    """
    old_boc = [int(c) for c in _config(model).block_out_channels]
    new_boc = check_widths(model, widths)
    groups = channel_groups(model)
    out: dict[str, torch.Tensor] = {}
    for i in range(1, len(old_boc)):
        if old_boc[i - 1] != old_boc[i] or new_boc[i - 1] == new_boc[i]:
            continue
        resnet = f"down_blocks.{i}.resnets.0"
        for g in groups:
            ins = [m for m in g.members if m.param == f"{resnet}.norm1.weight"]
            outs = [m for m in g.members if m.param == f"{resnet}.conv2.weight" and m.dim == 0]
            if ins and outs:
                order = list(orders[g.key])
                kin = _kept_channels(order, _member_width(g, ins[0], old_boc, new_boc), g.size).tolist()
                kout = _kept_channels(order, _member_width(g, outs[0], old_boc, new_boc), g.size).tolist()
                w = torch.zeros(len(kout), len(kin), 1, 1)
                pos = {c: j for j, c in enumerate(kin)}
                for r, c in enumerate(kout):
                    if c in pos:
                        w[r, pos[c], 0, 0] = 1.0
                out[f"{resnet}.conv_shortcut.weight"] = w
                out[f"{resnet}.conv_shortcut.bias"] = torch.zeros(len(kout))
                break
        else:  # identity shortcut means one coupled group; not finding it is a bug
            raise RuntimeError(f"no identity-coupled group found for {resnet}")
    return out


def slice_widths(model: nn.Module, widths: dict[str, int], orders: dict[str, list[int]]) -> nn.Module:
    """A stock UNet2DModel with ``block_out_channels`` cut to ``widths``; each group keeps its top channels.

    Parameters are index-selected copies of ``model``'s; a ``conv_shortcut`` that only the new config has
    (the stage's in and out widths became different) is the exact 0/1 selection between the two.
    """
    from diffusers import UNet2DModel

    new_boc = check_widths(model, widths)
    index = width_index_map(model, widths, orders)
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config["block_out_channels"] = tuple(new_boc)
    with torch.device("meta"):  # no random init of weights that are overwritten next
        new = UNet2DModel(**config)
    old_state = model.state_dict()
    new_state = new.state_dict()
    state = {}
    added = width_new_tensors(model, widths, orders)
    for name, target in new_state.items():
        if name not in old_state:
            if name not in added or added[name].shape != target.shape:
                raise RuntimeError(f"sliced model has an unexpected new tensor {name}")
            state[name] = added[name].to(dtype=old_state[next(iter(old_state))].dtype)
            continue
        t = old_state[name].detach()
        for dim, idx in index.get(name, {}).items():
            t = t.index_select(dim, idx.to(t.device))  # a copy: the supernet is never aliased
        if tuple(t.shape) != tuple(target.shape):
            raise RuntimeError(f"slicing {name} gave {tuple(t.shape)}, the new config needs {tuple(target.shape)}")
        state[name] = t if name in index else t.clone()
    lost = sorted(set(old_state) - set(new_state))
    if lost:
        raise FineDeployError(f"widths {widths} drop learned tensors {lost[:3]}; choose other widths")
    new.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in [*new.parameters(), *new.buffers()]):
        raise RuntimeError("sliced model kept an uninitialised tensor")  # a bug, not user input
    ref = next(model.parameters())
    if ref.dtype != torch.float32 or ref.device.type != "cpu":
        new = new.to(device=ref.device, dtype=ref.dtype)
    new.train(model.training)
    return new
