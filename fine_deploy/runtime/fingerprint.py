"""What machine a measurement came from, so that reports can tell like from unlike."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from fine_deploy.runtime.backends import cpu_affinity, runtime_versions


def _cpuinfo() -> tuple[str | None, int | None]:
    """CPU model name and physical core count from /proc/cpuinfo (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, None
    model = None
    cores: set[tuple[str, str]] = set()
    phys = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif not key and phys is not None and core is not None:
            cores.add((phys, core))
            phys = core = None
    if phys is not None and core is not None:
        cores.add((phys, core))
    return model, (len(cores) or None)


def _gpus() -> list[str]:
    """NVIDIA GPU models from the driver's procfs (no CUDA context, no subprocess)."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return names


def machine_fingerprint() -> dict[str, Any]:
    """CPU model, cores, threads, OS, Python and runtime versions, plus a short id over them."""
    model, physical = _cpuinfo()
    fp: dict[str, Any] = {
        "cpu_model": model or platform.processor() or platform.machine(),
        "physical_cores": physical,
        "logical_cores": os.cpu_count(),
        "usable_cores": cpu_affinity(),
        "gpus": _gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "versions": runtime_versions(),
    }
    # The id ignores the package's own version so that a baseline survives a release bump.
    key = {k: v for k, v in fp.items() if k != "versions"}
    key["runtimes"] = {k: v for k, v in fp["versions"].items() if k != "fine-deploy"}
    fp["id"] = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return fp
