"""The Supernet object: one spec + one tensor dict, and everything derived from them.

`subnet(config)` is the one function export and retraining build on: it folds U·diag(σ)·Vᵀ at the
chosen ranks, picks the chosen depth (σ interpolated along depth, FINE's initialisation of a new
depth) and slices the chosen widths, returning a stock diffusers module whose config describes it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import canonical_json
from fine_deploy.supernet import io
from fine_deploy.supernet.layers import FactorizedConv2d, FactorizedLinear, SharedBasis
from fine_deploy.supernet.spec import SupernetSpec, TypeSpec

_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")


@dataclass
class SubnetConfig:
    """One value per knob. A knob left out takes its full value."""

    ranks: dict[str, int] = field(default_factory=dict)  # type name -> rank
    widths: dict[str, int] = field(default_factory=dict)  # width knob (stage) -> channels
    depth: int | None = None  # number of transformer blocks (DiT)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> SubnetConfig:
        d = d or {}
        unknown = set(d) - {"ranks", "widths", "depth"}
        if unknown:
            raise FineDeployError(f"subnet config: unknown knob(s) {sorted(unknown)}; use ranks, widths, depth")
        return cls(dict(d.get("ranks") or {}), dict(d.get("widths") or {}), d.get("depth"))


def backbone_class(name: str) -> type:
    import diffusers

    from fine_deploy.supernet.types import SUPPORTED_BACKBONES

    if name not in SUPPORTED_BACKBONES:
        raise FineDeployError(f"backbone {name} is not supported; supported: {', '.join(SUPPORTED_BACKBONES)}")
    return getattr(diffusers, name)


def basis_names(t: str) -> tuple[str, str]:
    return f"basis.{t}.U", f"basis.{t}.V"


def depth_positions(full: int | None, depth: int | None) -> list[float] | None:
    """Source position along the supernet's depth of each block of a depth-`depth` subnet (None: all kept)."""
    if depth is None or depth == full:
        return None
    if depth == 1:
        return [0.0]
    return [j * (full - 1) / (depth - 1) for j in range(depth)]


def sigma_sources(matrix: str, pos: list[float] | None, full: int | None) -> list[tuple[str, float]]:
    """(supernet matrix, weight) pairs whose weighted σ sum is `matrix`'s σ: linear interpolation along depth."""
    if pos is None:
        return [(matrix, 1.0)]
    p = pos[int(_BLOCK.match(matrix).group(1))]
    lo, hi = int(p), min(int(p) + 1, full - 1)
    a = p - lo
    srcs = [(_BLOCK.sub(f"transformer_blocks.{lo}.", matrix), 1 - a)]
    if a > 0:
        srcs.append((_BLOCK.sub(f"transformer_blocks.{hi}.", matrix), a))
    return srcs


def dense_source(name: str, pos: list[float] | None) -> str:
    """The supernet parameter a subnet's dense parameter copies: the nearest block along depth."""
    m = _BLOCK.match(name)
    if pos is None or not m:
        return name
    return _BLOCK.sub(f"transformer_blocks.{round(pos[int(m.group(1))])}.", name)


def backbone_config(config: dict[str, Any], depth: int | None = None) -> dict[str, Any]:
    """The diffusers config of a subnet: the supernet's public keys, `num_layers` set by the depth knob."""
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    if depth is not None:
        cfg["num_layers"] = depth
    return cfg


def fold(U: torch.Tensor, V: torch.Tensor, sigma: torch.Tensor, r: int) -> torch.Tensor:
    """Dense matrix U_r · diag(σ_r) · V_rᵀ, computed in float64 so folding adds no rounding of its own."""
    return ((U[:, :r].double() * sigma[:r].double()) @ V[:, :r].double().T).to(U.dtype)


class Supernet:
    def __init__(self, spec: SupernetSpec, tensors: dict[str, torch.Tensor], path: Path | None = None) -> None:
        self.spec = spec
        self.tensors = tensors
        self.path = path

    # --- files ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Supernet:
        path = Path(path)
        spec = io.read_spec(path)
        return cls(spec, io.read_tensors(path, spec), path)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        io.write_supernet(path, self.spec, self.tensors)
        self.path = path
        return path

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical spec, which itself holds the weights' sha256."""
        return hashlib.sha256(canonical_json(self.spec.to_json()).encode()).hexdigest()

    # --- knobs ------------------------------------------------------------------------------------
    @property
    def types(self) -> list[TypeSpec]:
        return self.spec.types

    @property
    def full_depth(self) -> int | None:
        return self.spec.depth.get("full")

    def full_config(self) -> SubnetConfig:
        return SubnetConfig({t.name: t.max_rank for t in self.types}, {}, None)

    def validate(self, config: SubnetConfig) -> SubnetConfig:
        names = {t.name: t for t in self.types}
        for name, r in config.ranks.items():
            if name not in names:
                raise FineDeployError(f"subnet config: unknown type {name!r}; types: {', '.join(names)}")
            if not isinstance(r, int) or not 1 <= r <= names[name].max_rank:
                raise FineDeployError(
                    f"subnet config: rank {r!r} for type {name!r} is outside 1..{names[name].max_rank}"
                )
        if config.depth is not None:
            opts = self.spec.depth.get("options") or []
            if not opts:
                raise FineDeployError(f"subnet config: {self.spec.backbone} supernet has no depth knob; drop depth")
            if config.depth not in opts:
                raise FineDeployError(f"subnet config: depth {config.depth} not among the options {opts}")
        if config.widths:
            knobs = self.spec.widths.get("knobs") or {}
            for k, w in config.widths.items():
                if k not in knobs:
                    raise FineDeployError(
                        f"subnet config: unknown width knob {k!r}; knobs: {', '.join(knobs) or 'none'}"
                    )
                if w not in knobs[k]:
                    raise FineDeployError(f"subnet config: width {w} for {k!r} not among the options {knobs[k]}")
        return config

    # --- materialise ------------------------------------------------------------------------------
    def _depth_map(self, depth: int | None) -> list[float] | None:
        return depth_positions(self.full_depth, depth)

    def sigma(self, matrix: str, depth: int | None = None) -> torch.Tensor:
        """σ of a matrix of the subnet at `depth` (interpolated along depth when it differs from full)."""
        return self._sigma(matrix, self._depth_map(depth))

    def _sigma(self, matrix: str, pos_map: list[float] | None) -> torch.Tensor:
        if pos_map is None:
            return self.tensors[f"sigma.{matrix}"]
        return sum(w * self.tensors[f"sigma.{n}"] for n, w in sigma_sources(matrix, pos_map, self.full_depth))

    def _new_module(self, depth: int | None) -> nn.Module:
        return backbone_class(self.spec.backbone).from_config(backbone_config(self.spec.config, depth))

    def folded_state_dict(self, config: SubnetConfig) -> dict[str, torch.Tensor]:
        """State dict of the full-width subnet at the config's ranks and depth, all weights dense."""
        pos_map = self._depth_map(config.depth)
        depth = config.depth if pos_map is not None else None
        model = self._new_module(depth)
        sd: dict[str, torch.Tensor] = {}
        for name, _ in model.named_parameters():
            src = dense_source(name, pos_map)
            if f"dense.{src}" in self.tensors:
                sd[name] = self.tensors[f"dense.{src}"]
        n_new = depth if depth is not None else None
        for t in self.types:
            r = config.ranks.get(t.name, t.max_rank)
            U, V = (self.tensors[n] for n in basis_names(t.name))
            for m in t.matrices:
                blk = _BLOCK.match(m["name"])
                if n_new is not None and blk and int(blk.group(1)) >= n_new:
                    continue
                W = fold(U, V, self._sigma(m["name"], pos_map), r)
                for p in m["parts"]:
                    a, b = p["rows"]
                    w = W[a:b]
                    if t.kind == "conv":
                        kh, kw = t.kernel_size
                        w = w.reshape(b - a, -1, kh, kw)
                    sd[f"{p['module']}.weight"] = w.contiguous()
        return sd

    def subnet(self, config: SubnetConfig | dict | None = None) -> nn.Module:
        """A stock diffusers module for the chosen ranks, widths and depth, weights folded dense."""
        if not isinstance(config, SubnetConfig):
            config = SubnetConfig.from_json(config)
        config = self.validate(config)
        pos_map = self._depth_map(config.depth)
        model = self._new_module(config.depth if pos_map is not None else None)
        missing, unexpected = model.load_state_dict(self.folded_state_dict(config), strict=False)
        # buffers recomputed from the config (pos-embeds) are not stored, parameters always are
        params = {n for n, _ in model.named_parameters()}
        if set(missing) & params or unexpected:
            raise FineDeployError(
                f"supernet weights do not fit {self.spec.backbone}: missing {sorted(set(missing) & params)[:3]}, "
                f"unexpected {unexpected[:3]}; the supernet is corrupt, re-create it"
            )
        if any(w != self.full_width(k) for k, w in config.widths.items()):
            from fine_deploy.supernet.ofa import slice_widths

            model = slice_widths(model, config.widths, self.spec.widths["orders"])
        return model.eval()

    def full_width(self, knob: str) -> int:
        return max(self.spec.widths["knobs"][knob])

    def factorized_module(self) -> nn.Module:
        """The full backbone with every typed weight replaced by a factorised layer (for training)."""
        model = self._new_module(None)
        model.load_state_dict(self.folded_state_dict(self.full_config()), strict=False)
        bases = nn.ModuleDict()
        sigmas = nn.ParameterDict()
        for t in self.types:
            U, V = (self.tensors[n] for n in basis_names(t.name))
            basis = bases[t.name] = SharedBasis(U, V)
            for m in t.matrices:
                sigma = sigmas[m["name"].replace(".", "__")] = nn.Parameter(
                    self.tensors[f"sigma.{m['name']}"].clone()
                )
                for p in m["parts"]:
                    parent_name, _, child = p["module"].rpartition(".")
                    parent = model.get_submodule(parent_name)
                    old = getattr(parent, child)
                    rows = tuple(p["rows"]) if len(m["parts"]) > 1 else None
                    if t.kind == "conv":
                        new = FactorizedConv2d(basis, sigma, old, rows)
                    else:
                        new = FactorizedLinear(basis, sigma, old.bias, rows)
                    setattr(parent, child, new)
        model.fine_bases = bases
        model.fine_sigmas = sigmas
        return model

    def update_from_factorized(self, model: nn.Module) -> None:
        """Write trained factors and dense parameters of a `factorized_module()` back into the tensors."""
        for t in self.types:
            b = model.fine_bases[t.name]
            U, V = basis_names(t.name)
            self.tensors[U], self.tensors[V] = b.U.detach().clone(), b.V.detach().clone()
            for m in t.matrices:
                self.tensors[f"sigma.{m['name']}"] = model.fine_sigmas[m["name"].replace(".", "__")].detach().clone()
        own = {n: p for n, p in model.named_parameters()}
        for name in self.spec.dense:
            self.tensors[f"dense.{name}"] = own[name].detach().clone()


def load_supernet(path: str | Path | None = None) -> Supernet:
    """A supernet directory, or the embedded default when `path` is None / "default"."""
    if path is None or str(path) == "default":
        from fine_deploy.zoo import default_supernet_path

        return Supernet.load(default_supernet_path())
    return Supernet.load(path)


def example_inputs(backbone: str, config: dict[str, Any], batch: int = 1, resolution: int | None = None,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Fixed random model inputs for a backbone (what export, parity and shape tracing feed it)."""
    g = torch.Generator().manual_seed(seed)
    res = resolution or config["sample_size"]
    x = torch.randn(batch, config["in_channels"], res, res, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    if backbone == "DiTTransformer2DModel":
        n_cls = config.get("num_embeds_ada_norm") or 1
        return {"hidden_states": x, "timestep": t, "class_labels": torch.randint(0, n_cls, (batch,), generator=g)}
    return {"sample": x, "timestep": t}


@torch.no_grad()
def layer_shapes(sn: Supernet, config: SubnetConfig | dict | None = None, batch: int = 1,
                 resolution: int | None = None) -> list[tuple[str, Any]]:
    """(matrix name, LayerShape) of every factorised matrix of a subnet, traced at batch × resolution.

    Rows seen by each layer come from a real forward pass with hooks, so token counts follow the
    backbone's own down/up-sampling instead of a hand-written shape walk.
    """
    from fine_deploy.cost.shapes import LayerShape

    config = config if isinstance(config, SubnetConfig) else SubnetConfig.from_json(config)
    model = sn.subnet(config)
    seen: dict[str, tuple] = {}
    hooks = []
    for t in sn.types:
        for m in t.matrices:
            part = m["parts"][0]["module"]
            try:
                mod = model.get_submodule(part)
            except AttributeError:  # block dropped by the depth knob
                continue

            def hook(mod, args, out, name=m["name"]):
                seen[name] = tuple(out.shape)

            hooks.append(mod.register_forward_hook(hook))
    try:
        model(**example_inputs(sn.spec.backbone, sn.spec.config, batch, resolution))
    finally:
        for h in hooks:
            h.remove()
    out = []
    for t in sn.types:
        for m in t.matrices:
            if m["name"] not in seen:
                continue
            shape = seen[m["name"]]
            # rows of the built modules, not of the spec: a width-sliced subnet has fewer
            rows = sum(model.get_submodule(p["module"]).weight.shape[0] for p in m["parts"])
            mod = model.get_submodule(m["parts"][0]["module"])
            if t.kind == "conv":
                n, c, h, w = shape
                k = t.kernel_size[0]
                out.append((m["name"], LayerShape("conv", rows, mod.in_channels * k * k, n * h * w, k=k,
                                                  group=t.name, stride=mod.stride[0], out_w=w)))
            else:
                tokens = int(torch.tensor(shape[:-1]).prod()) if len(shape) > 1 else 1
                out.append((m["name"], LayerShape("linear", rows, mod.in_features, tokens, group=t.name)))
    return out
