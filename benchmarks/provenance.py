"""What every benchmark result records about where it came from, and the check that flags a stale one.

Each script in this folder writes ``results/<script>.json`` with a top-level ``"provenance"`` block made
by :func:`provenance`; ``python -m benchmarks --check`` and tests/test_benchmark_provenance.py run
:func:`check_results` over the folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# every benchmark script, cheapest first (the order `python -m benchmarks --run all` regenerates them in);
# each writes results/<name>.json when run with its default arguments
SCRIPTS = ("cp_fit", "rank_error", "kernel_forms", "user_walk", "predictor_accuracy", "planner", "precision",
           "regression_detector", "quality_at_latency", "recovery", "real_size")


def git_commit() -> str:
    """The commit of this checkout (the code a result was made with), or "unknown" outside git."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=HERE).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def supernet_record(supernet: Any) -> dict[str, Any] | None:
    """{"path", "sha256"} of one supernet, or {name: that} of several (see :func:`provenance`)."""
    if supernet is None:
        return None
    if isinstance(supernet, dict):
        if set(supernet) == {"path", "sha256"}:
            return dict(supernet)
        return {str(k): supernet_record(v) for k, v in supernet.items()}
    if hasattr(supernet, "content_hash"):  # a loaded Supernet: where it was saved, if it was
        return {"path": str(supernet.path) if supernet.path is not None else None, "sha256": supernet.content_hash}
    from fine_deploy.supernet.core import load_supernet

    path = "default" if str(supernet) == "default" else str(supernet)
    return {"path": path, "sha256": load_supernet(None if path == "default" else path).content_hash}


def _input_hash(value: Any) -> Any:
    if isinstance(value, Path):
        return hashlib.sha256(value.read_bytes()).hexdigest()
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, str):
        return value
    return hashlib.sha256(json.dumps(_jsonable(value), sort_keys=True).encode()).hexdigest()


def provenance(args: Any, supernet: Any = None, lut: str | Path | None = None, **inputs: Any) -> dict[str, Any]:
    """The ``"provenance"`` block of a results file.

    args: the script's argparse Namespace (or a dict) -- its arguments, defaults included.
    supernet: what it measured: None (no supernet), "default" (the shipped one), a supernet directory, a
        loaded Supernet (its save path, or None when it was never saved), an already made {"path", "sha256"},
        or a dict {name: any of these} when it measured several. The sha256 is the supernet's content_hash.
    lut: the LUT file it priced with (hashed), or None.
    inputs: name=value of anything else it read: a Path (the file's sha256), bytes (their sha256), a str
        (recorded as given: a hash or an identifier) or a JSON-able value (the sha256 of its sorted JSON).
    """
    return {
        "git_commit": git_commit(),
        "args": _jsonable(vars(args) if hasattr(args, "__dict__") else dict(args)),
        "supernet": supernet_record(supernet),
        "lut_sha256": _input_hash(Path(lut)) if lut is not None else None,
        "inputs": {k: _input_hash(v) for k, v in inputs.items()},
    }


@lru_cache(maxsize=1)
def shipped_hash() -> str:
    """content_hash of the default supernet that ships in the package."""
    from fine_deploy.supernet.core import load_supernet

    return load_supernet(None).content_hash


def script_schema(name: str) -> int | None:
    """The ``"schema": N`` a script writes today (read from its source: importing it would import torch)."""
    found = set(re.findall(r"""["']schema["']\s*:\s*(\d+)""", (HERE / f"{name}.py").read_text()))
    return int(found.pop()) if len(found) == 1 else None


def _supernets(rec: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    if not rec:
        return []
    if set(rec) == {"path", "sha256"}:
        return [("", rec)]
    return [(name, r) for name, r in rec.items() if r]


def check_record(record: dict[str, Any], schema: int | None = None, shipped: str | None = None) -> list[str]:
    """Why a results record is stale; [] when it is not.

    schema: what its script writes today (None: not checked). shipped: the default supernet's content_hash
    to compare with (None: the shipped one's).
    """
    prov = record.get("provenance")
    if not isinstance(prov, dict):
        return ["no provenance block (re-run the script)"]
    problems = [f"provenance has no {k}" for k in ("git_commit", "args") if not prov.get(k)]
    if schema is not None and record.get("schema") != schema:
        problems.append(f"schema {record.get('schema')} but the script now writes {schema}")
    for name, sn in _supernets(prov.get("supernet")):
        if sn.get("path") != "default":
            continue  # a supernet the script built or converted itself: nothing shipped to compare with
        shipped = shipped or shipped_hash()
        if sn.get("sha256") != shipped:
            what = f"supernet {name}" if name else "supernet"
            problems.append(f"{what} sha256 {str(sn.get('sha256'))[:12]} is not the shipped default's {shipped[:12]}")
    return problems


def check_results(folder: Path = RESULTS, shipped: str | None = None) -> dict[str, list[str]]:
    """results file name -> why it is stale, for every results/*.json and every script's missing one."""
    out = {f"{name}.json": ["missing (run the script)"] for name in SCRIPTS if not (folder / f"{name}.json").is_file()}
    for path in sorted(folder.glob("*.json")):
        name = path.stem
        if name not in SCRIPTS:
            out[path.name] = [f"no script writes it (scripts: {', '.join(SCRIPTS)}); delete it or rename"]
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError as e:
            out[path.name] = [f"not JSON ({e})"]
            continue
        out[path.name] = check_record(record, script_schema(name), shipped)
    return out
