"""plan.json: what `plan` decided and what `export` / `retrain` / `bench` read.

A plan names its supernet (a path or "default") with the supernet's content hash, and the device
profile / LUT it was priced with and their hashes, so that a plan is never applied to other inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fine_deploy.cost.precisions import DEFAULT as DEFAULT_PRECISION
from fine_deploy.cost.precisions import PRECISIONS
from fine_deploy.cost.shapes import FORMS
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_json
from fine_deploy.schemas import PLAN, dict_of, malformed, require

SCHEMA = 1
FORMAT = "fine-deploy-plan"
KERNEL_FORMS = FORMS  # the cost model prices exactly the forms a plan may choose


@dataclass
class Plan:
    supernet: dict[str, Any]  # {"path": "default" | str, "sha256": Supernet.content_hash}
    subnet: dict[str, Any]  # SubnetConfig json: {"ranks": {type: r}, "widths": {knob: c}, "depth": n | None}
    # kernel form per factorised matrix (layer) name; a layer left out is "dense"
    kernels: dict[str, str] = field(default_factory=dict)
    # precision per layer name, type name or "*" (every layer); see `precision_of`. Absent (plans written
    # before the field) means fp32 everywhere, so schema 1 still describes every plan.
    precision: dict[str, str] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)  # {"device", "resolved", "sha256", "lut", "lut_sha256"}
    budget: dict[str, Any] = field(default_factory=dict)  # {"mem_bytes", "latency_s", "steps", "batch", ...}
    inputs: dict[str, Any] = field(default_factory=dict)  # {"batch": 1, "resolution": 16}
    predicted: dict[str, Any] = field(default_factory=dict)  # {"latency_s", "memory_bytes", "quality_loss", ...}
    binding: str | None = None  # "memory" | "latency" | "quality" | None
    solver: dict[str, Any] = field(default_factory=dict)
    explain: list[dict[str, Any]] = field(default_factory=list)
    schema: int = SCHEMA
    format: str = FORMAT

    def kernel(self, layer: str) -> str:
        return self.kernels.get(layer, "dense")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["precision"]:
            del d["precision"]  # an fp32 plan reads exactly as before the field existed
        return d

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def from_json(cls, d: Any, where: str = "plan.json") -> Plan:
        d = PLAN.check(d, where)
        fix = PLAN.fix
        with malformed(where, PLAN.name, fix):
            plan = cls(**{k: v for k, v in d.items() if k in _FIELDS})
        require(isinstance(plan.supernet.get("path", "default"), str), where, "supernet.path must be a string", fix)
        require(dict_of(plan.kernels, str), where, "kernels must map layer names to kernel forms", fix)
        bad = {k: v for k, v in plan.kernels.items() if v not in KERNEL_FORMS}
        if bad:
            k, v = next(iter(bad.items()))
            raise FineDeployError(f"{where}: kernel form {v!r} for {k!r} is not one of {', '.join(KERNEL_FORMS)}")
        require(dict_of(plan.precision, str), where, "precision must map layer/type names or \"*\" to precisions",
                fix)
        bad = {k: v for k, v in plan.precision.items() if v not in PRECISIONS}
        if bad:
            k, v = next(iter(bad.items()))
            raise FineDeployError(f"{where}: precision {v!r} for {k!r} is not one of {', '.join(PRECISIONS)}")
        sub = plan.subnet
        require(set(sub) <= {"ranks", "widths", "depth"}, where,
                f"subnet has unknown knob(s) {sorted(set(sub) - {'ranks', 'widths', 'depth'})}", fix)
        require(sub.get("ranks") is None or dict_of(sub["ranks"], int), where,
                "subnet.ranks must map type names to integer ranks", fix)
        require(sub.get("widths") is None or dict_of(sub["widths"], int), where,
                "subnet.widths must map knob names to integer widths", fix)
        require(sub.get("depth") is None or (isinstance(sub["depth"], int) and not isinstance(sub["depth"], bool)),
                where, "subnet.depth must be an integer or null", fix)
        for key in ("batch", "resolution"):
            v = plan.inputs.get(key)
            require(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), where,
                    f"inputs.{key} must be a positive integer", fix)
        return plan

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        return cls.from_json(PLAN.read(path, missing=f"make one with `fine-deploy plan ... -o {path}`"), str(path))


_FIELDS = {f.name for f in fields(Plan)}


def precision_of(plan: Plan, layer_name: str, type_name: str | None = None) -> str:
    """The precision `plan` gives one layer: its own entry, else its type's, else "*", else fp32.

    The one reading of plan.json's `precision` map; every exporter asks it per layer."""
    table = plan.precision
    for key in (layer_name, type_name, "*"):
        if key is not None and key in table:
            return table[key]
    return DEFAULT_PRECISION


def supernet_for_plan(plan: Plan, override: str | Path | None = None):
    """The plan's supernet (or `override`), refused when its content hash differs from the plan's or the
    plan records none, and when a knob value of the plan is not one of that supernet's options."""
    from fine_deploy.supernet.core import load_supernet

    where = override if override is not None else plan.supernet.get("path", "default")
    want = plan.supernet.get("sha256")
    if not isinstance(want, str) or not want:
        raise FineDeployError(
            "the plan records no supernet sha256, so it cannot be checked against a supernet; "
            "re-run `fine-deploy plan` to make a complete plan"
        )
    sn = load_supernet(where)
    if sn.content_hash != want:
        raise FineDeployError(
            f"supernet {where} (hash {sn.content_hash[:12]}) is not the one this plan was made from "
            f"(hash {want[:12]}); pass the right --supernet or re-run `fine-deploy plan`"
        )
    check_plan_knobs(plan, sn)
    return sn


def check_plan_knobs(plan: Plan, sn) -> None:
    """Every rank, width and depth of the plan is one of the supernet's options (a hand edit is caught here)."""
    fix = "use one of those values or re-run `fine-deploy plan`"
    types = {t.name: t for t in sn.types}
    for name, r in (plan.subnet.get("ranks") or {}).items():
        if name not in types:
            raise FineDeployError(f"plan: rank for unknown type {name!r}; types are {', '.join(types)}")
        opts = list(types[name].rank_options)
        if r not in opts:
            raise FineDeployError(f"plan: rank {r} for type {name!r} is not one of its rank options {opts}; {fix}")
    knobs = sn.spec.widths.get("knobs") or {}
    for k, w in (plan.subnet.get("widths") or {}).items():
        if k not in knobs:
            raise FineDeployError(f"plan: unknown width knob {k!r}; knobs are {', '.join(knobs) or 'none'}")
        if w not in knobs[k]:
            raise FineDeployError(f"plan: width {w} for {k!r} is not one of its options {knobs[k]}; {fix}")
    depth = plan.subnet.get("depth")
    if depth is not None:
        opts = list(sn.spec.depth.get("options") or [])
        if depth not in opts:
            raise FineDeployError(f"plan: depth {depth} is not one of the supernet's depth options {opts}; {fix}")
