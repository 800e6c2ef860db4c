"""Grouping a backbone's factorisable matrices (found by its adapter) into FINE types.

A type is a set of equal-shape weight matrices W_l (m1 x m2; conv weights as out x in*kh*kw) that share
one pair of bases U_t, V_t: the matrices of one role (adapter's word) and one shape. Equal role but
different shape splits a type.
"""

from __future__ import annotations

from torch import nn

from fine_deploy.backbones import Found, Matrix, Part, WeightType, adapter_of

__all__ = ["Matrix", "Part", "WeightType", "dense_parameters", "find_types", "group_types"]


def group_types(found: list[Found]) -> list[WeightType]:
    by_role: dict[str, dict[tuple, list[Matrix]]] = {}
    for role, m, shape in found:
        by_role.setdefault(role, {}).setdefault(shape, []).append(m)
    types = []
    for role, shapes in by_role.items():
        for (kind, m1, m2, ks), mats in shapes.items():
            name = role if len(shapes) == 1 else f"{role}_{m1}x{m2}"
            types.append(WeightType(name, kind, m1, m2, ks, mats))
    return types


def find_types(model: nn.Module) -> list[WeightType]:
    """The types of a supported diffusers backbone (one FineDeployError line for an unsupported class)."""
    return group_types(adapter_of(model).matrices(model))


def dense_parameters(model: nn.Module, types: list[WeightType]) -> list[str]:
    """Names of every parameter that is not a factorised weight (biases of factorised layers included)."""
    factorised = {f"{p.module}.weight" for t in types for m in t.matrices for p in m.parts}
    return [n for n, _ in model.named_parameters() if n not in factorised]
