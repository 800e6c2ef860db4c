"""Which measurement makes two separate bench runs comparable on this platform, and why.

Wall time of the same model read ×1.42 apart in two runs 11 s apart on a shared 2-core VM: other
processes take the core, and a core that idled runs slower until it has been busy. What holds across
runs, best first:

- hardware instruction counts (``perf stat -e instructions``): nearly independent of load and clock,
  but they need a CPU PMU, which most cloud VMs do not expose (this project's CI VM lists no ``cpu`` in
  /sys/bus/event_source/devices), and they miss memory stalls; this version does not collect them, it
  records whether the platform could.
- process CPU time (``time.process_time``) with one intra-op thread: time the scheduler gives to other
  processes is not counted, so it still sees the model's own work on a loaded machine;
- divided, round by round, by the calibration kernel's CPU time in the same round: what slows every
  instruction for a while (a busy hyper-thread sibling, a throttled or cold core, a slower machine)
  slows both alike and cancels.
- GPU backends: wall time (the GPU's work is not process CPU time), divided by the calibration kernel's
  wall time only as a coarse machine-speed ratio.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

_PMU_DIRS = ("cpu", "cpu_core", "cpu_atom", "armv8_pmuv3", "armv8_pmuv3_0")


def has_cpu_pmu() -> bool:
    """True when the kernel exposes a CPU performance-monitoring unit (Linux perf_event)."""
    root = Path("/sys/bus/event_source/devices")
    return any((root / d).exists() for d in _PMU_DIRS)


def cross_run_metric(backend: str, threads: int | None) -> dict[str, Any]:
    """The metric ``report`` uses to compare separate runs of a model benched on ``backend``."""
    pmu = sys.platform.startswith("linux") and has_cpu_pmu() and shutil.which("perf") is not None
    instructions = (
        "not collected by this version (the platform has a CPU PMU and perf: a candidate for a later one)"
        if pmu
        else "unavailable: no CPU PMU exposed here (typical of cloud VMs), so no instruction counts"
    )
    if backend == "onnxruntime-cpu":
        why = "process CPU time excludes time other processes take; per-round calibration cancels machine speed"
        if threads != 1:
            why += "; with more than one intra-op thread, thread hand-offs add CPU time noise (use --threads 1)"
        return {
            "metric": "cpu",
            "normaliser": "calibration CPU time in the same round",
            "instructions": instructions,
            "why": why,
        }
    return {
        "metric": "wall",
        "normaliser": "calibration wall time in the same round",
        "instructions": instructions,
        "why": "accelerator work is not process CPU time; wall time it is, so separate runs are noisier",
    }
