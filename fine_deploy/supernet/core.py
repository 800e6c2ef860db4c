"""The Supernet object: one spec + one tensor dict, and everything derived from them.

`subnet(config)` is the one function export and retraining build on: it folds U·diag(σ)·Vᵀ at the
chosen ranks, picks the chosen depth (σ interpolated along depth, FINE's initialisation of a new
depth) and slices the chosen widths, returning a stock diffusers module whose config describes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fine_deploy.backbones import adapter_for
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import canonical_json
from fine_deploy.supernet import io
from fine_deploy.supernet.spec import COMPONENTS_DIR, SupernetSpec, TypeSpec


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


def basis_names(t: str) -> tuple[str, str]:
    return f"basis.{t}.U", f"basis.{t}.V"


def depth_positions(full: int | None, depth: int | None) -> list[float] | None:
    """Source position along the supernet's depth of each block of a depth-`depth` subnet (None: all kept)."""
    if depth is None or depth == full:
        return None
    if depth == 1:
        return [0.0]
    return [j * (full - 1) / (depth - 1) for j in range(depth)]


@dataclass(frozen=True)
class MatrixSource:
    """One factorised matrix of a subnet: its type, the supernet σ it interpolates, its module parts."""

    type: str
    name: str
    sigma: tuple[tuple[str, float], ...]  # (supernet matrix, weight): linear interpolation along depth
    parts: tuple[tuple[str, int, int], ...]  # (module path, row start, row stop)


@dataclass
class Layout:
    """Where every parameter of a subnet of one depth comes from (FINE's depth initialisation)."""

    depth: int | None
    dense: list[tuple[str, str]]  # (subnet parameter, supernet dense parameter): the nearest block
    matrices: list[MatrixSource]

    def names(self) -> list[str]:
        return [m.name for m in self.matrices]


def _renormalised(srcs: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    total = sum(w for _, w in srcs)
    return tuple((n, w / total) for n, w in srcs)


def fold(U: torch.Tensor, V: torch.Tensor, sigma: torch.Tensor, r: int) -> torch.Tensor:
    """Dense matrix U_r · diag(σ_r) · V_rᵀ: the one fold, used by subnets, training (differentiably),
    the quality proxy and export's dense layers, in the factors' precision (float32): at published sizes a float64
    fold of every weight dominates building a subnet, and float32 rounding stays far below export parity."""
    return (U[:, :r] * sigma[:r]) @ V[:, :r].T


def source_name(matrix: str) -> str:
    """Tensor holding a converted layer's source weight (the exact top option of a `source_top` type)."""
    return f"source.{matrix}"


def layer_weight(tensors: dict[str, torch.Tensor], t: TypeSpec, sigma: tuple[tuple[str, float], ...],
                 r: int) -> torch.Tensor:
    """Dense [m1, m2] weight of one layer at rank option r: the fold of the factors, or at a `source_top`
    type's top option the source weight itself (interpolated along depth with σ's weights; at full depth
    a copy of the source, bit for bit). `tensors` may hold trainable tensors: this is differentiable."""
    if t.is_source(r):
        return sum(w * tensors[source_name(n)] for n, w in sigma)
    U, V = (tensors[n] for n in basis_names(t.name))
    return fold(U, V, sum(w * tensors[f"sigma.{n}"] for n, w in sigma), r)


class Supernet:
    def __init__(self, spec: SupernetSpec, tensors: dict[str, torch.Tensor], path: Path | None = None) -> None:
        self.spec = spec
        self.tensors = tensors
        self.path = path
        self.adapter = adapter_for(spec.backbone)
        self._layouts: dict[int | None, Layout] = {}
        self.component_sources: dict[str, Path] = {}  # name -> folder, for a pipeline converted but not yet saved

    # --- files ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Supernet:
        path = Path(path)
        spec = io.read_spec(path)
        return cls(spec, io.read_tensors(path, spec), path)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        io.write_supernet(path, self.spec, self.tensors, {n: self.component_dir(n) for n in self.components})
        self.path = path
        self.component_sources = {}
        return path

    # --- a converted pipeline's other components ----------------------------------------------------
    @property
    def components(self) -> dict[str, dict]:
        """The carried components (text encoders, tokenizers, VAE, scheduler) by folder name; {} for a denoiser."""
        return dict(self.spec.pipeline.get("components") or {})

    @property
    def text_tokens(self) -> int | None:
        """The denoiser's text sequence length in its pipeline (None: the adapter's default)."""
        return self.spec.pipeline.get("text_tokens")

    def component_dir(self, name: str) -> Path:
        """Where a carried component's files are: the source folder until saved, then components/<name>/."""
        if name in self.component_sources:
            return self.component_sources[name]
        if self.path is None:
            raise FineDeployError(f"component {name}: this supernet was never saved, its files are nowhere")
        return self.path / COMPONENTS_DIR / name

    def check_components(self) -> None:
        if self.path is not None and not self.component_sources:
            io.check_components(self.path, self.spec)

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
            t = names[name]
            if not isinstance(r, int) or not 1 <= r <= t.max_rank:
                raise FineDeployError(
                    f"subnet config: rank {r!r} for type {name!r} is outside 1..{t.max_rank}"
                )
            if t.source_top and t.factor_rank < r < t.max_rank:
                raise FineDeployError(
                    f"subnet config: rank {r} for type {name!r} is neither a factor rank (1..{t.factor_rank}) nor "
                    f"the exact source option {t.max_rank}; pick one of {t.rank_options}"
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
    def layout(self, depth: int | None = None) -> Layout:
        """Where each parameter of the depth-`depth` subnet comes from (cached per depth).

        At full depth the subnet is the supernet. Otherwise block j of the subnet takes σ linearly
        interpolated at its position along the supernet's depth, from source matrices of its own type
        (a block whose structure differs, e.g. SD3's context_pre_only last block, maps to its own kind),
        and its dense parameters from the nearest block.
        """
        depth = None if depth is None or depth == self.full_depth else int(depth)
        if depth in self._layouts:
            return self._layouts[depth]
        if depth is None:
            mats = [MatrixSource(t.name, m["name"], ((m["name"], 1.0),),
                                 tuple((p["module"], *p["rows"]) for p in m["parts"]))
                    for t in self.types for m in t.matrices]
            layout = Layout(None, [(n, n) for n in self.spec.dense], mats)
        else:
            layout = self._depth_layout(depth)
        self._layouts[depth] = layout
        return layout

    def _depth_layout(self, depth: int) -> Layout:
        ad, full = self.adapter, self.full_depth
        pos = depth_positions(full, depth)
        type_of = {m["name"]: t.name for t in self.types for m in t.matrices}
        with torch.device("meta"):  # names and shapes only
            skeleton = ad.build(self.spec.config, depth)
        mats, factorised = [], set()
        for _, m, _ in ad.matrices(skeleton):
            j = ad.block_index(m.name)
            if j is None:
                srcs = [(m.name, 1.0)]
            else:
                p = pos[j]
                lo, hi = int(p), min(int(p) + 1, full - 1)
                srcs = [(ad.rename_block(m.name, lo), 1 - (p - lo)), (ad.rename_block(m.name, hi), p - lo)]
            srcs = [(n, w) for n, w in srcs if n in type_of and w > 0]
            if not srcs:
                raise FineDeployError(f"depth {depth}: no supernet layer to initialise {m.name} from; "
                                      "the supernet is corrupt, re-create it")
            t = type_of[srcs[0][0]]
            srcs = [(n, w) for n, w in srcs if type_of[n] == t]
            mats.append(MatrixSource(t, m.name, _renormalised(srcs), tuple((p.module, *p.rows) for p in m.parts)))
            factorised |= {f"{p.module}.weight" for p in m.parts}
        dense = []
        for name, prm in skeleton.named_parameters():
            if name in factorised:
                continue
            j = ad.block_index(name)
            src = name if j is None else ad.rename_block(name, round(pos[j]))
            have = self.spec.tensors.get(f"dense.{src}")
            if have is None and f"dense.{src}" in self.tensors:
                have = list(self.tensors[f"dense.{src}"].shape)
            if have is None or list(have) != list(prm.shape):
                raise FineDeployError(f"depth {depth}: {name} has no source of its shape in the supernet; "
                                      "the supernet is corrupt, re-create it")
            dense.append((name, src))
        return Layout(depth, dense, mats)

    def weight(self, matrix: str, r: int, depth: int | None = None) -> torch.Tensor:
        """Dense weight of one layer of the depth-`depth` subnet at rank option r (`layer_weight`)."""
        for ms in self.layout(depth).matrices:
            if ms.name == matrix:
                return layer_weight(self.tensors, self.spec.type(ms.type), ms.sigma, r)
        raise FineDeployError(f"the depth-{depth} subnet has no layer {matrix!r}")

    @property
    def exact_top(self) -> bool:
        """Whether the full subnet reproduces a converted source model: every type's top option is either
        the stored source weight or a fold at the exact rank L·min(m1, m2)."""
        return bool(self.spec.conversion) and all(
            t.source_top or t.max_rank >= t.layers * min(t.m1, t.m2) for t in self.types)

    def sigma(self, matrix: str, depth: int | None = None) -> torch.Tensor:
        """σ of a matrix of the subnet at `depth` (interpolated along depth when it differs from full)."""
        for ms in self.layout(depth).matrices:
            if ms.name == matrix:
                return sum(w * self.tensors[f"sigma.{n}"] for n, w in ms.sigma)
        raise FineDeployError(f"the depth-{depth} subnet has no layer {matrix!r}")

    def folded_state_dict(self, config: SubnetConfig) -> dict[str, torch.Tensor]:
        """State dict of the full-width subnet at the config's ranks and depth, all weights dense."""
        layout = self.layout(config.depth)
        # copies: a subnet's parameters must never alias the supernet's tensors
        sd = {name: self.tensors[f"dense.{src}"].clone() for name, src in layout.dense}
        kinds = {t.name: t for t in self.types}
        for ms in layout.matrices:
            t = kinds[ms.type]
            W = layer_weight(self.tensors, t, ms.sigma, config.ranks.get(t.name, t.max_rank))
            for module, a, b in ms.parts:
                w = W[a:b]
                if t.kind == "conv":
                    w = w.reshape(b - a, -1, *t.kernel_size)
                sd[f"{module}.weight"] = w.contiguous()
        return sd

    def subnet(self, config: SubnetConfig | dict | None = None) -> nn.Module:
        """A stock diffusers module for the chosen ranks, widths and depth, weights folded dense."""
        if not isinstance(config, SubnetConfig):
            config = SubnetConfig.from_json(config)
        config = self.validate(config)
        model = self.adapter.build(self.spec.config, self.layout(config.depth).depth, empty=True)
        params = {n for n, _ in model.named_parameters()}
        missing, unexpected = model.load_state_dict(self.folded_state_dict(config), strict=False, assign=True)
        # buffers recomputed from the config (pos-embeds) are not stored, parameters always are
        if set(missing) & params or unexpected:
            raise FineDeployError(
                f"supernet weights do not fit {self.spec.backbone}: missing {sorted(set(missing) & params)[:3]}, "
                f"unexpected {unexpected[:3]}; the supernet is corrupt, re-create it"
            )
        if any(w != self.full_width(k) for k, w in config.widths.items()):
            model = self.adapter.slice_widths(model, config.widths, self.spec.widths["orders"])
        return model.eval()

    def full_width(self, knob: str) -> int:
        return max(self.spec.widths["knobs"][knob])


def load_supernet(path: str | Path | None = None) -> Supernet:
    """A supernet directory, or the embedded default when `path` is None / "default"."""
    if path is None or str(path) == "default":
        from fine_deploy.zoo import default_supernet_path

        return Supernet.load(default_supernet_path())
    return Supernet.load(path)
