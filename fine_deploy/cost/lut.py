"""The measured cost table (LUT) of one device and runtime, its schema and its checks.

A LUT holds, per layer choice (shape x form x rank), the measured seconds that choice adds to a
run, plus the fixed cost of a run and the roofline calibrated on those measurements. It records
the machine fingerprint, runtime versions and measurement protocol, so that a LUT taken with
another runtime version is flagged instead of silently used.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fine_deploy.cost.shapes import LayerShape
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_json
from fine_deploy.schemas import LUT as LUT_CONTRACT
from fine_deploy.schemas import Number, dict_of, is_type, malformed, require

# 2: `seconds` is fitted on whole chains (the one-layer estimate moved to `single_s`); no reference_s
SCHEMA = LUT_CONTRACT.schema


@dataclass(frozen=True)
class LutEntry:
    shape: LayerShape
    form: str
    rank: int | None
    macs: int
    weight_bytes: int
    activation_bytes: int  # input + intermediate + output, fp32
    # what the layer adds inside a model: fitted on timed whole chains (profiler.fit_in_model),
    # starting from `single_s`
    seconds: float
    raw_s: float  # its one-layer graph's time, as measured
    median_s: float
    # its one-layer graph's time minus the empty graph's and minus half the boundary cost of its
    # input and of its output tensor (see `boundaries`): the fit's prior
    single_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = self.shape.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LutEntry:
        return cls(**{**d, "shape": LayerShape.from_dict(d["shape"])})


@dataclass
class Lut:
    device: str
    runtime: str
    fingerprint: dict[str, Any]
    runtime_versions: dict[str, str | None]
    session: dict[str, Any]  # what the runtime layer reports: backend, providers, options
    protocol: dict[str, Any]
    empty_run_s: float  # one run of an empty graph: what every model pays once
    entries: dict[str, LutEntry] = field(default_factory=dict)
    # per activation tensor ("1x32x16x16"): what a model pays at its boundaries when that tensor is
    # its input plus its output (layout reorders, output allocation), beyond the empty graph
    boundaries: dict[str, float] = field(default_factory=dict)
    # fixed overhead of a whole model beyond the empty run, fitted on end-to-end subnet timings
    calibration: dict[str, Any] = field(default_factory=dict)
    roofline: dict[str, Any] = field(default_factory=dict)  # calibrated roofline parameters
    complete: bool = False
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "device": self.device,
            "runtime": self.runtime,
            "fingerprint": self.fingerprint,
            "runtime_versions": self.runtime_versions,
            "session": self.session,
            "protocol": self.protocol,
            "empty_run_s": self.empty_run_s,
            "entries": {k: v.to_dict() for k, v in sorted(self.entries.items())},
            "boundaries": dict(sorted(self.boundaries.items())),
            "calibration": self.calibration,
            "roofline": self.roofline,
            "complete": self.complete,
        }

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())


def validate_lut_dict(data: Any, where: str = "LUT") -> Lut:
    """Check a LUT's structure and values (schemas.LUT, then each entry); one line naming the first problem."""
    data = LUT_CONTRACT.check(data, where)
    fix = LUT_CONTRACT.fix
    require(data["empty_run_s"] >= 0, where, "empty_run_s is negative", fix)
    require(dict_of(data["boundaries"], Number), where, "boundaries must map tensor shapes to seconds", fix)
    entries: dict[str, LutEntry] = {}
    for key, raw in data["entries"].items():
        with malformed(f"{where}: entry {key}", "LUT entry", fix):
            entry = LutEntry.from_dict(raw)
            figures = (entry.raw_s, entry.seconds, entry.median_s, entry.macs, entry.weight_bytes,
                       entry.activation_bytes)
        dims = [getattr(entry.shape, f) for f in ("m1", "m2", "tokens", "k", "stride", "out_w")]
        require(all(is_type(v, int) for v in dims) and is_type(entry.shape.group, str), where,
                f"entry {key} has a mistyped shape", fix)
        require(all(is_type(v, Number) for v in figures) and is_type(entry.form, str)
                and (entry.rank is None or is_type(entry.rank, int))
                and (entry.single_s is None or is_type(entry.single_s, Number)),
                where, f"entry {key} has mistyped figures", fix)
        require(entry.raw_s > 0 and entry.seconds >= 0 and entry.macs > 0, where,
                f"entry {key} has non-positive figures", fix)
        entries[key] = entry
    return Lut(
        device=data["device"],
        runtime=data["runtime"],
        fingerprint=data["fingerprint"],
        runtime_versions=data["runtime_versions"],
        session=data["session"],
        protocol=data["protocol"],
        empty_run_s=float(data["empty_run_s"]),
        entries=entries,
        boundaries={str(k): float(v) for k, v in data["boundaries"].items()},
        calibration=data["calibration"],
        roofline=data["roofline"],
        complete=data["complete"],
        schema=data["schema"],
    )


def load_lut(path: str | os.PathLike) -> Lut:
    path = Path(path)
    data = LUT_CONTRACT.read(path, missing="run `fine-deploy profile --device NAME` first or pass --lut")
    return validate_lut_dict(data, f"LUT {path.name}")


def lut_path(device: str, runtime: str) -> Path:
    """The default LUT file of a device and runtime: in the user cache (fine_deploy.paths)."""
    from fine_deploy.paths import measured_lut_path

    return measured_lut_path(device, runtime)


def compatibility_problems(lut: Lut, versions: dict[str, str | None] | None = None) -> list[str]:
    """Why this LUT may not describe the runtime installed here (empty when it does)."""
    if versions is None:
        from fine_deploy.runtime.backends import runtime_versions

        versions = runtime_versions()
    problems = []
    for name in ("onnxruntime", "tensorrt", "coremltools"):
        had, has = lut.runtime_versions.get(name), versions.get(name)
        if had is not None and had != has:
            problems.append(f"{name} {had} measured, {has or 'none'} installed")
    return problems


def check_compatible(lut: Lut, versions: dict[str, str | None] | None = None, *, allow: bool = False) -> list[str]:
    """Refuse a LUT measured with another runtime version (or, with allow=True, return the warnings)."""
    problems = compatibility_problems(lut, versions)
    if problems and not allow:
        raise FineDeployError(
            f"LUT of {lut.device} was measured with another runtime ({'; '.join(problems)}); "
            "re-run `fine-deploy profile` on this machine"
        )
    return problems


_MACHINE_KEYS = ("cpu_model", "logical_cores", "usable_cores", "gpus", "os", "machine")


def same_machine(lut: Lut, fingerprint: dict[str, Any] | None = None) -> bool:
    """Whether the LUT was measured on this machine (runtime versions aside)."""
    if fingerprint is None:
        from fine_deploy.runtime import machine_fingerprint

        fingerprint = machine_fingerprint()
    return all(lut.fingerprint.get(k) == fingerprint.get(k) for k in _MACHINE_KEYS)


def load_lut_checked(path: str | os.PathLike, *, allow_other_versions: bool = False) -> tuple[Lut, list[str]]:
    """Load a LUT for planning: one measured on this machine must match the runtime installed here
    (refused, or returned as warnings with allow_other_versions); one from another machine (a
    Jetson's) cannot be checked here, and its versions travel with it into the plan."""
    lut = load_lut(path)
    if not same_machine(lut):
        return lut, []
    return lut, check_compatible(lut, allow=allow_other_versions)
