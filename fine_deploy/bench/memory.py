"""What one artifact adds to a process's memory, measured so that the order of artifacts does not matter.

Measured in the same process, the first model loaded also paid for the runtime's one-time set-up (ONNX
Runtime's environment, kernel registry and thread pools: ≈ 40 MiB here) and later models reused memory
the allocator kept: ΔRSS read ≈ 40 MiB for whichever model came first and ≈ 3 MiB for the second. So each
artifact is measured in a fresh Python process of its own (≈ 0.5 s), after a throwaway session has paid
the runtime's set-up: ΔRSS is then the model's own weights, arena and first-run buffers, whatever else
was benched before or after. A forked child was tried and rejected: it inherits the parent's heap, whose
free lists depend on what the parent ran before (ΔRSS 33 vs 14 MiB for one model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fine_deploy.runtime.spec import SessionOptions

ISOLATION = "fresh process per artifact, after a throwaway session paid the runtime's one-time set-up"


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _warm_runtime(options: SessionOptions, backend: str) -> None:
    """Open and run a tiny session so the runtime's one-time set-up is not counted as the model's."""
    if not backend.startswith("onnxruntime"):
        return
    import numpy as np
    import onnxruntime as ort

    from fine_deploy.bench.synthetic import matmul_chain_model
    from fine_deploy.runtime.ort import ort_session_options

    sess = ort.InferenceSession(matmul_chain_model(1, 8, rows=8), ort_session_options(options),
                                providers=["CPUExecutionProvider"])
    sess.run(["y"], {"x": np.zeros((8, 8), np.float32)})


def _measure(path: str, options: SessionOptions, backend: str, shapes: dict, batch: int, warmup: int) -> dict[str, Any]:
    from fine_deploy.runtime import open_session

    _warm_runtime(options, backend)
    peak_ok = _reset_peak()
    rss0 = _rss_bytes()
    session = open_session(Path(path), options, backend, shapes=shapes or None)
    mine = {k: v for k, v in shapes.items() if k in {s.name for s in session.inputs}}
    feeds = session.make_feeds(mine, batch=batch, seed=0)
    for _ in range(max(warmup, 1)):
        session.run(feeds)
    rss1, peak1 = _rss_bytes(), _peak_bytes()
    out = {
        "rss_increase_bytes": (rss1 - rss0) if rss0 is not None and rss1 is not None else None,
        "peak_rss_increase_bytes": (peak1 - rss0) if peak_ok and peak1 is not None and rss0 is not None else None,
        "device_peak_bytes": session.peak_device_memory() if hasattr(session, "peak_device_memory") else None,
    }
    session.close()
    return out


def measure_memory(
    path: Path, options: SessionOptions, backend: str, shapes: dict[str, tuple[int, ...]], batch: int, warmup: int
) -> tuple[dict[str, int | None], str | None]:
    """ΔRSS / peak ΔRSS (bytes) of loading ``path`` and running it ``warmup`` times, in a fresh process.

    Returns the byte counts and ``None``, or ``None`` counts and why the child failed.
    """
    args = {
        "path": str(path),
        "threads": options.threads,
        "spinning": options.spinning,
        "backend": backend,
        "shapes": {k: list(v) for k, v in shapes.items()},
        "batch": batch,
        "warmup": warmup,
    }
    # the child imports this very fine_deploy (a source checkout may shadow an installed one)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    none: dict[str, int | None] = {"rss_increase_bytes": None, "peak_rss_increase_bytes": None,
                                   "device_peak_bytes": None}
    try:
        proc = subprocess.run([sys.executable, "-m", "fine_deploy.bench.memory", json.dumps(args)],
                              capture_output=True, text=True, env=env, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return none, str(e)[:200]
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return none, tail[:200]
    return json.loads(lines[-1]), None


def _main(argv: list[str]) -> int:
    a = json.loads(argv[0])
    options = SessionOptions(threads=a["threads"], spinning=a["spinning"])
    shapes = {k: tuple(v) for k, v in a["shapes"].items()}
    print(json.dumps(_measure(a["path"], options, a["backend"], shapes, a["batch"], a["warmup"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
