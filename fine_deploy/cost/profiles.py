"""Device profiles: one YAML per device, shipped as package data (fine_deploy/profiles/, linked from
the repository's top-level profiles/), with public spec figures and aliases.

`host` is special: its figures are probed on this machine (fp32 GEMM throughput of ONNX Runtime,
copy bandwidth, memory) the first time it is loaded, and cached with the machine's fingerprint in
the user cache (fine_deploy.paths.measured_dir), never beside the YAMLs.
"""

from __future__ import annotations

import difflib
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fine_deploy.cost.precisions import WEIGHT_BITS, check_precision
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_write_json, read_cache
from fine_deploy.paths import measured_dir, shipped_profiles
from fine_deploy.schemas import PROFILE, Number, is_type, list_of, read_document

SCHEMA = PROFILE.schema
KINDS = ("cpu", "gpu", "soc")
HOST_PROBE_SCHEMA = 1
# GEMM and copy sizes of the host probe: big enough to leave the caches, small enough for ~2 s
_GEMM_N = 512
_COPY_BYTES = 64 << 20


@dataclass(frozen=True)
class DeviceProfile:
    schema: int
    name: str
    description: str
    kind: str
    source: str
    runtime: str
    runtimes: tuple[str, ...]
    dtypes: tuple[str, ...]
    peak_flops: dict[str, float]  # dense FLOP/s (ops/s for int8) per dtype
    memory_bandwidth: float  # bytes/s
    memory_bytes: int
    usable_memory_bytes: int  # what one process may allocate (physical minus the OS's share)
    runtime_overhead_bytes: int  # the runtime's own resident memory (CUDA context, libraries)
    launch_overhead_s: float  # per-kernel cost the roofline adds before calibration
    aliases: tuple[str, ...] = ()
    # what the runtime deploys (fine_deploy.cost.precisions names); a YAML without the field: its dtypes
    precisions: tuple[str, ...] = ()
    precisions_source: str = ""
    probed: dict[str, Any] = field(default_factory=dict)  # host only: what the probe measured

    def peak(self, dtype: str = "fp32") -> float:
        if dtype not in self.peak_flops:
            raise FineDeployError(
                f"device {self.name} has no {dtype} rate; use one of {', '.join(sorted(self.peak_flops))}"
            )
        return self.peak_flops[dtype]

    def require_precision(self, precision: str) -> str:
        """`precision` when this device's runtime deploys it, else one line naming the ones it does."""
        check_precision(precision, f"device {self.name}")
        if precision not in self.precisions:
            raise FineDeployError(
                f"device {self.name} ({self.runtime}) does not run {precision}; use one of {', '.join(self.precisions)}"
            )
        return precision

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["runtimes"], d["dtypes"], d["aliases"] = list(self.runtimes), list(self.dtypes), list(self.aliases)
        d["precisions"] = list(self.precisions)
        return d


def profiles_dir(path: str | os.PathLike | None = None) -> Path:
    """Where the device YAMLs live: `path`, $FINE_DEPLOY_PROFILES, or the ones shipped in the package."""
    if path is None:
        path = os.environ.get("FINE_DEPLOY_PROFILES") or shipped_profiles()
    path = Path(path)
    if not path.is_dir():
        raise FineDeployError(
            f"device profiles folder {path} does not exist; set FINE_DEPLOY_PROFILES to a folder of "
            "device YAMLs or unset it to use the shipped ones"
        )
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_document(path, "device profile", missing="run `fine-deploy devices` for the list",
                         invalid="fix the file", text="yaml")
    if not isinstance(data, dict):
        raise FineDeployError(f"profile {path.name} is not a mapping of fields; fix the file")
    return data


def validate_profile_dict(data: dict[str, Any], where: str) -> DeviceProfile:
    """Check every field's presence, type and range (schemas.PROFILE, then ranges); one line naming the first
    problem."""
    where = f"profile {where}"
    data = PROFILE.check(data, where)
    if data["kind"] not in KINDS:
        raise FineDeployError(f"{where}: kind must be one of {', '.join(KINDS)}")
    for key in ("runtimes", "dtypes"):
        if not list_of(data[key], str):
            raise FineDeployError(f"{where}: {key} must be a list of names; fix the value")
    if not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in data.get("aliases") or []):
        raise FineDeployError(f"{where}: aliases must be a list of names; fix the value")
    for dt, v in data["peak_flops"].items():
        if not is_type(v, Number) or v <= 0:
            raise FineDeployError(f"{where}: peak_flops.{dt} must be a positive number")
    missing = [d for d in data["dtypes"] if d not in data["peak_flops"]]
    if missing:
        raise FineDeployError(f"{where}: dtypes {missing} have no peak_flops entry; add them")
    precisions = data.get("precisions")
    if precisions is None:  # profiles written before the field: the stored dtypes the exporter knows
        precisions = [d for d in data["dtypes"] if d in WEIGHT_BITS]
    elif not precisions or not list_of(precisions, str):
        raise FineDeployError(f"{where}: precisions must be a non-empty list of names; fix the value")
    for p in precisions:
        check_precision(p, where)
    if data["runtime"] not in data["runtimes"]:
        raise FineDeployError(f"{where}: runtime {data['runtime']!r} is not among its runtimes")
    if data["memory_bandwidth"] <= 0 or data["memory_bytes"] <= 0:
        raise FineDeployError(f"{where}: memory_bandwidth and memory_bytes must be positive")
    if not 0 < data["usable_memory_bytes"] <= data["memory_bytes"]:
        raise FineDeployError(f"{where}: usable_memory_bytes must be in (0, memory_bytes]")
    if data["runtime_overhead_bytes"] < 0 or data["launch_overhead_s"] < 0:
        raise FineDeployError(f"{where}: overheads must not be negative")
    return DeviceProfile(
        schema=data["schema"],
        name=data["name"],
        description=data["description"],
        kind=data["kind"],
        source=data["source"],
        runtime=data["runtime"],
        runtimes=tuple(data["runtimes"]),
        dtypes=tuple(data["dtypes"]),
        peak_flops={k: float(v) for k, v in data["peak_flops"].items()},
        memory_bandwidth=float(data["memory_bandwidth"]),
        memory_bytes=data["memory_bytes"],
        usable_memory_bytes=data["usable_memory_bytes"],
        runtime_overhead_bytes=data["runtime_overhead_bytes"],
        launch_overhead_s=float(data["launch_overhead_s"]),
        aliases=tuple(str(a) for a in data.get("aliases") or ()),
        precisions=tuple(precisions),
        precisions_source=data.get("precisions_source", ""),
        probed=dict(data.get("probed") or {}),
    )


def _raw_profiles(directory: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        data = _read_yaml(path)
        if data.get("name") != path.stem:
            raise FineDeployError(f"profile {path.name} names itself {data.get('name')!r}; name it {path.stem!r}")
        aliases = data.get("aliases")
        if aliases is not None and not (
            isinstance(aliases, list) and all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in aliases)
        ):
            raise FineDeployError(f"profile {path.name}: aliases must be a list of names; fix the value")
        out[path.stem] = data
    return out


def alias_table(directory: str | os.PathLike | None = None) -> dict[str, str]:
    """alias -> profile name (every profile is also its own alias)."""
    directory = profiles_dir(directory)
    table: dict[str, str] = {}
    for name, data in _raw_profiles(directory).items():
        for alias in [name, *(str(a).lower() for a in data.get("aliases") or [])]:
            if alias in table and table[alias] != name:
                raise FineDeployError(f"alias {alias!r} names both {table[alias]} and {name}; keep it in one profile")
            table[alias] = name
    return table


def resolve_name(name: str, directory: str | os.PathLike | None = None) -> str:
    """The profile a name or alias means; unknown names get the close matches."""
    table = alias_table(directory)
    key = name.strip().lower()
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=4, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else "run `fine-deploy devices` for the list"
    raise FineDeployError(f"unknown device {name!r}; {hint}")


def load_profile(name: str, directory: str | os.PathLike | None = None, *, probe: bool = True) -> DeviceProfile:
    """The validated profile for `name` (an alias works); `host` is probed and cached."""
    directory = profiles_dir(directory)
    resolved = resolve_name(name, directory)
    data = _read_yaml(directory / f"{resolved}.yaml")
    if data.get("probe"):
        if not probe:
            raise FineDeployError(f"profile {resolved} is probed on use; load it with probe=True")
        data = {**data, **host_figures(measured_dir())}
        data.pop("probe", None)
    return validate_profile_dict(data, f"{resolved}.yaml")


def list_profiles(directory: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per profile (without probing the host): name, aliases, description, runtime, memory."""
    directory = profiles_dir(directory)
    rows = []
    for name, data in _raw_profiles(directory).items():
        if data.get("probe"):
            cached = _cached_probe(measured_dir())
            if cached is not None:
                data = {**data, **cached}
            data = {k: v for k, v in data.items() if k != "probe"}
            rows.append({**data, "probed": cached is not None})
            continue
        prof = validate_profile_dict(data, f"{name}.yaml")
        rows.append({**prof.to_dict(), "probed": None})
    return rows


# --- the host probe ------------------------------------------------------------------------------


def _probe_path(measured: Path) -> Path:
    return measured / "host-probe.json"


def _fingerprint_id() -> str:
    from fine_deploy.runtime import machine_fingerprint

    return machine_fingerprint()["id"]


def _cached_probe(measured: Path) -> dict[str, Any] | None:
    data = read_cache(_probe_path(measured))
    if data is None:
        return None
    if data.get("schema") != HOST_PROBE_SCHEMA or data.get("fingerprint_id") != _fingerprint_id():
        return None  # another machine or runtime version: probe again
    return data.get("figures")


def host_figures(measured: Path, *, refresh: bool = False) -> dict[str, Any]:
    """The host's profile fields, probed once per machine fingerprint and cached in `measured`."""
    if not refresh:
        cached = _cached_probe(measured)
        if cached is not None:
            return cached
    figures = probe_host()
    atomic_write_json(
        _probe_path(measured),
        {"schema": HOST_PROBE_SCHEMA, "fingerprint_id": _fingerprint_id(), "figures": figures},
    )
    return figures


def _memory() -> tuple[int, int]:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = total
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return total, min(available, total)


def gemm_flops(threads: int = 1, n: int = _GEMM_N, runs: int = 30) -> float:
    """fp32 GEMM FLOP/s of ONNX Runtime on `threads` intra-op threads (best of `runs`)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from fine_deploy.runtime import SessionOptions, open_session

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(model, path)
        with open_session(path, SessionOptions(threads=threads), "onnxruntime-cpu") as s:
            rng = np.random.default_rng(0)
            feeds = {k: rng.standard_normal((n, n)).astype(np.float32) for k in ("a", "b")}
            s.time_runs(feeds, 3)
            best = float(s.time_runs(feeds, runs).min())
    return 2.0 * n**3 / best


def copy_bandwidth(nbytes: int = _COPY_BYTES, runs: int = 8) -> float:
    """Bytes/s moved by a large memcpy (read + write counted), best of `runs`."""
    import numpy as np

    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * nbytes / best


def probe_host(threads: int = 1) -> dict[str, Any]:
    """Measure this machine's figures for the `host` profile (about 2-3 s)."""
    from fine_deploy.runtime.rss import runtime_rss_bytes

    total, available = _memory()
    gemm = gemm_flops(threads)
    bw = copy_bandwidth()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "peak_flops": {"fp32": gemm},
        "memory_bandwidth": bw,
        "memory_bytes": total,
        "usable_memory_bytes": available,
        "runtime_overhead_bytes": runtime_rss_bytes(),
        # an empty ONNX Runtime run from Python costs ~10 us; the calibration replaces this guess
        "launch_overhead_s": 2.0e-6,
        "probed": {"cores": cores, "threads": threads, "gemm_n": _GEMM_N, "copy_bytes": _COPY_BYTES},
    }
