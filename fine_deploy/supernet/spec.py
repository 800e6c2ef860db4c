"""supernet.json: the architecture recipe of a supernet, kept apart from its weights (safetensors).

Everything a reader needs to rebuild any subnet without this project: the stock diffusers backbone
class and config, which matrices share which bases, the knobs (rank per type, width per stage, depth)
and the measured costs of each knob value (reconstruction error now; sensitivity after training).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fine_deploy.errors import FineDeployError
from fine_deploy.supernet.types import Matrix, Part, WeightType

# 2: TypeSpec.source_top + `source.*` tensors (a converted model's exact top option) and the `conversion`
# record; schema-1 files still load (they have neither)
SCHEMA = 2
READS = (1, 2)
FORMAT = "fine-deploy-supernet"
SPEC_FILE = "supernet.json"
WEIGHTS_FILE = "weights.safetensors"
COMPONENTS_DIR = "components"


@dataclass
class TypeSpec:
    name: str
    kind: str
    m1: int
    m2: int
    kernel_size: list[int] | None
    matrices: list[dict[str, Any]]  # [{"name": str, "parts": [{"module": str, "rows": [a, b]}]}]
    max_rank: int
    rank_options: list[int]
    # relative Frobenius error of the stacked [L, m1, m2] weights, by rank (str keys: JSON)
    reconstruction_error: dict[str, float] = field(default_factory=dict)
    # True for a converted type whose factors could not be exact: its top rank option, max_rank = L·min(m1, m2)
    # (the rank at which shared factors would reproduce every layer), is kept as the source weights
    # themselves (`source.<matrix>` tensors) instead of as L·min(m1, m2) columns of bases, so a plan with
    # nothing binding is exactly the user's model. The factors hold `factor_rank` columns.
    source_top: bool = False

    @property
    def factor_rank(self) -> int:
        """Columns of U_t, V_t: the largest rank that is a fold of the factors."""
        if not self.source_top:
            return self.max_rank
        return max(r for r in self.rank_options if r < self.max_rank)

    def is_source(self, r: int) -> bool:
        """Whether rank option r is the stored source weight (the exact top option)."""
        return self.source_top and r > self.factor_rank

    @property
    def layers(self) -> int:
        return len(self.matrices)

    def weight_type(self) -> WeightType:
        mats = [
            Matrix(m["name"], tuple(Part(p["module"], tuple(p["rows"])) for p in m["parts"]))
            for m in self.matrices
        ]
        ks = tuple(self.kernel_size) if self.kernel_size else None
        return WeightType(self.name, self.kind, self.m1, self.m2, ks, mats)

    @classmethod
    def from_weight_type(cls, t: WeightType, max_rank: int, rank_options: list[int]) -> TypeSpec:
        mats = [
            {"name": m.name, "parts": [{"module": p.module, "rows": list(p.rows)} for p in m.parts]}
            for m in t.matrices
        ]
        ks = list(t.kernel_size) if t.kernel_size else None
        return cls(t.name, t.kind, t.m1, t.m2, ks, mats, max_rank, rank_options)

    def params_at(self, r: int) -> dict[str, int]:
        """Weight counts of the three kernel forms at rank r (DESIGN §4); the source option is dense only."""
        L = self.layers
        if self.is_source(r):
            return {"dense": L * self.m1 * self.m2}
        return {
            "dense": L * self.m1 * self.m2,
            "low_rank": L * r * (self.m1 + self.m2),
            "shared_basis": r * (self.m1 + self.m2) + L * r,
        }


@dataclass
class SupernetSpec:
    backbone: str  # diffusers class name
    config: dict[str, Any]  # its diffusers config (what from_config takes)
    types: list[TypeSpec]
    dense: list[str]  # parameter names kept dense
    widths: dict[str, Any] = field(default_factory=dict)  # knobs, channel groups, orders, allocations
    depth: dict[str, Any] = field(default_factory=dict)  # {"full": L, "options": [...], "init": "..."}
    # Filled by training; the planner's quality side. Layout (a data-free proxy uses the same, proxy: true):
    # {"metric": "heldout_denoising_loss", "baseline": float, "proxy": bool,
    #  "ranks": {type: {str(r): loss increase}}, "widths": {knob: {str(w): ...}}, "depth": {str(d): ...}}
    sensitivity: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, list[int]] = field(default_factory=dict)  # name -> shape of every stored tensor
    weights_sha256: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    # a converted pipeline folder: {"class": stock pipeline class, "denoiser": "unet" | "transformer",
    # "model_index": the source's model_index.json, "text_tokens": the denoiser's text length, "dropped": [...],
    # "components": {name: {"library", "class", "role", "files": {rel: sha256}, "params", "weight_bytes",
    # "flops", "activation_bytes", "at"}}}; the components' files live in COMPONENTS_DIR/<name>/
    pipeline: dict[str, Any] = field(default_factory=dict)
    # convert's measurement of how far the supernet is from the model it came from (`supernet.fidelity`):
    # {"metric", "inputs", "full_model": {...}, "factors_only": {...}, "types": {type: {...}}}; empty when
    # the supernet was trained, not converted (or converted before schema 2)
    conversion: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA
    format: str = FORMAT

    def type(self, name: str) -> TypeSpec:
        for t in self.types:
            if t.name == name:
                return t
        raise FineDeployError(f"unknown type {name!r}; types: {', '.join(t.name for t in self.types)}")

    def to_json(self) -> dict[str, Any]:
        """The spec as written. Fields added by schema 2 are left out while unused, and such a spec keeps
        the schema it was read with, so every supernet made before them keeps its bytes and content hash
        (plans record that hash)."""
        d = asdict(self)
        new = bool(self.conversion) or bool(self.pipeline) or any(t.source_top for t in self.types)
        for key in ("conversion", "pipeline"):
            if not d[key]:
                del d[key]
        for t in d["types"]:
            if not t["source_top"]:
                del t["source_top"]
        d["schema"] = SCHEMA if new else self.schema
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = SPEC_FILE) -> SupernetSpec:
        from fine_deploy.schemas import SUPERNET, malformed, validate_supernet_spec

        d = SUPERNET.check(d, where)
        with malformed(where, SUPERNET.name, SUPERNET.fix):
            d = {k: v for k, v in d.items() if k in _FIELDS}
            d["types"] = [TypeSpec(**t) for t in d["types"]]
            spec = cls(**d)
        validate_supernet_spec(spec, where)
        return spec


_FIELDS = {f.name for f in fields(SupernetSpec)}


def training_data_source(spec: SupernetSpec) -> str | None:
    """The images the supernet was trained on where they can be loaded here: "digits", or an image folder that
    still exists (what static int8 calibrates on when no --calib is given); None otherwise."""
    from pathlib import Path

    prov = spec.provenance or {}
    source = (prov.get("data") or {}).get("source") or ((prov.get("recipe") or {}).get("data") or {}).get("source")
    if not isinstance(source, str) or (source != "digits" and not Path(source).is_dir()):
        return None
    return source
