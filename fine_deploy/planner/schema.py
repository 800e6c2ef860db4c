"""plan.json: what `plan` decided and what `export` / `retrain` / `bench` read.

A plan names its supernet (a path or "default") with the supernet's content hash, and the device
profile / LUT it was priced with and their hashes, so that a plan is never applied to other inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fine_deploy.cost.shapes import FORMS
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_json, read_json

SCHEMA = 1
FORMAT = "fine-deploy-plan"
KERNEL_FORMS = FORMS  # the cost model prices exactly the forms a plan may choose


@dataclass
class Plan:
    supernet: dict[str, Any]  # {"path": "default" | str, "sha256": Supernet.content_hash}
    subnet: dict[str, Any]  # SubnetConfig json: {"ranks": {type: r}, "widths": {knob: c}, "depth": n | None}
    # kernel form per factorised matrix (layer) name; a layer left out is "dense"
    kernels: dict[str, str] = field(default_factory=dict)
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
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def from_json(cls, d: Any, where: str = "plan.json") -> Plan:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise FineDeployError(
                f"{where}: not a fine-deploy plan (format field missing or wrong); make one with `fine-deploy plan`"
            )
        if d.get("schema") != SCHEMA:
            raise FineDeployError(
                f"{where}: plan schema {d.get('schema')!r} is not supported (expected {SCHEMA}); "
                "re-run `fine-deploy plan`"
            )
        try:
            plan = cls(**d)
        except TypeError as e:
            raise FineDeployError(f"{where}: malformed plan ({e}); re-run `fine-deploy plan`") from None
        bad = {k: v for k, v in plan.kernels.items() if v not in KERNEL_FORMS}
        if bad:
            k, v = next(iter(bad.items()))
            raise FineDeployError(f"{where}: kernel form {v!r} for {k!r} is not one of {', '.join(KERNEL_FORMS)}")
        return plan

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        d = read_json(
            path, missing=f"make one with `fine-deploy plan ... -o {path}`", invalid="re-run `fine-deploy plan`"
        )
        return cls.from_json(d, str(path))


def supernet_for_plan(plan: Plan, override: str | Path | None = None):
    """The plan's supernet (or `override`), refused when its content hash differs from the plan's."""
    from fine_deploy.supernet.core import load_supernet

    where = override if override is not None else plan.supernet.get("path", "default")
    sn = load_supernet(where)
    want = plan.supernet.get("sha256")
    if want and sn.content_hash != want:
        raise FineDeployError(
            f"supernet {where} (hash {sn.content_hash[:12]}) is not the one this plan was made from "
            f"(hash {want[:12]}); pass the right --supernet or re-run `fine-deploy plan`"
        )
    return sn
