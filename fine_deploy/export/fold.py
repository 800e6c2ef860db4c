"""Fold a supernet into a subnet whose every factorised layer runs in the kernel form the plan chose.

Starts from `Supernet.subnet(config)` (a stock diffusers module, every weight folded dense, widths
sliced, depth chosen) and swaps the nn.Linear / nn.Conv2d parts of each low-rank or shared-basis
layer for the modules of `kernels.py`, built from the same U, σ, V (in float64, like `fold`). A layer's
width slice keeps the matching rows of U and V, so all three forms compute the same function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fine_deploy.backbones import Adapter
from fine_deploy.errors import FineDeployError
from fine_deploy.export.kernels import LowRankConv2d, LowRankLinear, SharedBasisConv2d, SharedBasisLinear
from fine_deploy.planner.schema import KERNEL_FORMS
from fine_deploy.supernet.core import SubnetConfig, Supernet, basis_names


@dataclass
class FoldedSubnet:
    """A stock diffusers module with the plan's kernel forms swapped in, and what was built."""

    model: nn.Module
    adapter: Adapter
    config: SubnetConfig
    forms: dict[str, str]  # matrix (layer) name -> kernel form, every layer present in the subnet
    ranks: dict[str, int]  # type name -> rank used
    shared_bases: dict[str, int] = field(default_factory=dict)  # type -> distinct shared tensors built
    parts: set[str] = field(default_factory=set)  # module paths of the factorised layers' parts

    def weight_bytes(self) -> dict[str, int]:
        """Bytes of the unique parameters: all of them, and those of the factorised layers alone."""
        seen: dict[int, int] = {}
        for p in self.model.parameters():  # parameters() yields a shared Parameter once
            seen[id(p)] = p.numel() * p.element_size()
        factorised: dict[int, int] = {}
        for name, mod in self.model.named_modules():
            if name in self.parts:
                for pname, p in mod.named_parameters(recurse=False):
                    if pname != "bias":
                        factorised[id(p)] = p.numel() * p.element_size()
        return {"total": sum(seen.values()), "factorised": sum(factorised.values())}


def present_layers(sn: Supernet, config: SubnetConfig) -> list[str]:
    """Matrix names of the layers a subnet has (its depth decides which blocks exist)."""
    return sn.layout(config.depth).names()


def resolve_forms(sn: Supernet, config: SubnetConfig, kernels: dict[str, str] | None) -> dict[str, str]:
    """Kernel form of every present layer: the plan's choice, dense where it names none."""
    kernels = dict(kernels or {})
    present = present_layers(sn, config)
    known = {m["name"] for t in sn.types for m in t.matrices}
    for name, form in kernels.items():
        if form not in KERNEL_FORMS:
            raise FineDeployError(f"kernel form {form!r} for {name!r} is not one of {', '.join(KERNEL_FORMS)}")
        if name not in known:
            raise FineDeployError(
                f"plan names layer {name!r}, which the supernet does not have (e.g. {next(iter(known))}); "
                "re-run `fine-deploy plan` for this supernet"
            )
    missing = set(kernels) - set(present)
    if missing and any(kernels[n] != "dense" for n in missing):
        name = sorted(missing)[0]
        raise FineDeployError(
            f"plan gives a kernel form to {name!r}, which a depth-{config.depth} subnet does not have; "
            "re-run `fine-deploy plan`"
        )
    return {name: kernels.get(name, "dense") for name in present}


def uniform_kernels(sn: Supernet, config: SubnetConfig | dict | None, form: str) -> dict[str, str]:
    """Every present layer in one kernel form (what benchmarks compare the per-layer choice with)."""
    if form not in KERNEL_FORMS:
        raise FineDeployError(f"kernel form {form!r} is not one of {', '.join(KERNEL_FORMS)}")
    config = config if isinstance(config, SubnetConfig) else SubnetConfig.from_json(config)
    return {name: form for name in present_layers(sn, config)}


def _width_index(sn: Supernet, config: SubnetConfig) -> dict[str, dict[int, torch.Tensor]]:
    if not config.widths or all(w == sn.full_width(k) for k, w in config.widths.items()):
        return {}
    full = sn.subnet(SubnetConfig(dict(config.ranks), {}, config.depth))
    return sn.adapter.width_index_map(full, config.widths, sn.spec.widths["orders"])


def _key(idx: torch.Tensor | None) -> tuple[int, ...] | None:
    return None if idx is None else tuple(int(i) for i in idx)


def fold_subnet(
    sn: Supernet, config: SubnetConfig | dict[str, Any] | None, kernels: dict[str, str] | None = None
) -> FoldedSubnet:
    """The subnet at `config` with each layer in its kernel form (dense where `kernels` says nothing)."""
    config = config if isinstance(config, SubnetConfig) else SubnetConfig.from_json(config)
    config = sn.validate(config)
    model = sn.subnet(config)
    forms = resolve_forms(sn, config, kernels)
    ranks = {t.name: config.ranks.get(t.name, t.max_rank) for t in sn.types}
    layout = sn.layout(config.depth)
    parts = {p[0] for ms in layout.matrices for p in ms.parts}
    folded = FoldedSubnet(model, sn.adapter, config, forms, ranks, parts=parts)
    if all(f == "dense" for f in forms.values()):
        return folded
    index = _width_index(sn, config)
    shared: dict[tuple, nn.Parameter] = {}
    kinds = {t.name: t for t in sn.types}
    for ms in layout.matrices:
        form = forms.get(ms.name, "dense")
        if form == "dense":
            continue
        t = kinds[ms.type]
        r = ranks[t.name]
        if t.is_source(r):
            raise FineDeployError(
                f"plan gives {ms.name} the {form} form at rank {r}, the exact source option of type {t.name}, which "
                f"is stored dense only; re-run `fine-deploy plan` (factored forms go up to rank {t.factor_rank})")
        U_full, V_full = (sn.tensors[n][:, :r].double() for n in basis_names(t.name))
        conv = t.kind == "conv"
        kk = t.kernel_size[0] * t.kernel_size[1] if conv else 1
        sigma = sum(w * sn.tensors[f"sigma.{n}"] for n, w in ms.sigma)[:r].double()
        # parts of a fused matrix read the same input, so they share the input projection
        first = f"{ms.parts[0][0]}.weight"
        in_idx = index.get(first, {}).get(1)
        V = V_full
        if in_idx is not None:
            V = V.reshape(-1, kk, r)[in_idx].reshape(-1, r)
        old0 = model.get_submodule(ms.parts[0][0])
        if conv:
            v_layout = V.T.reshape(r, old0.in_channels, *t.kernel_size).float().contiguous()
        else:
            v_layout = V.float().contiguous()
        if form == "low_rank":
            down = nn.Parameter(v_layout)
        else:
            down = shared.setdefault(("V", t.name, _key(in_idx)), nn.Parameter(v_layout))
            sig = nn.Parameter((sigma.float().reshape(1, r, 1, 1) if conv else sigma.float()).clone())
        for module, a, b in ms.parts:
            U = U_full[a:b]
            out_idx = index.get(f"{module}.weight", {}).get(0)
            if out_idx is not None:
                U = U[out_idx]
            parent_name, _, child = module.rpartition(".")
            parent = model.get_submodule(parent_name)
            old = getattr(parent, child)
            if conv:
                if form == "low_rank":
                    new = LowRankConv2d(old, down, (U * sigma)[:, :, None, None].float())
                else:
                    Up = shared.setdefault(
                        ("U", t.name, (a, b), _key(out_idx)),
                        nn.Parameter(U[:, :, None, None].float().contiguous()),
                    )
                    new = SharedBasisConv2d(old, down, Up, sig)
                ok = (new.out_channels, new.in_channels) == (U.shape[0], old.in_channels)
            else:
                if form == "low_rank":
                    new = LowRankLinear(down, (U * sigma).T.float(), old.bias)
                else:
                    Ut = shared.setdefault(
                        ("U", t.name, (a, b), _key(out_idx)), nn.Parameter(U.T.float().contiguous())
                    )
                    new = SharedBasisLinear(down, Ut, sig, old.bias)
                ok = (new.out_features, new.in_features) == (old.out_features, old.in_features)
            if not ok:  # a bug in width bookkeeping, never user input
                raise RuntimeError(f"{module}: {form} factors do not match the sliced layer {old}")
            setattr(parent, child, new)
    for key in shared:
        folded.shared_bases[key[1]] = folded.shared_bases.get(key[1], 0) + 1
    return folded


def dense_reference(sn: Supernet, config: SubnetConfig | dict[str, Any] | None) -> nn.Module:
    """The all-dense subnet: what every kernel form must match up to float rounding."""
    config = config if isinstance(config, SubnetConfig) else SubnetConfig.from_json(config)
    return sn.subnet(config)
