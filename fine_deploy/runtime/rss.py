"""The one memory measurement: what loading and running a model adds to a process's resident set (RSS).

Measured in the same process, the first model loaded also paid for the runtime's one-time set-up (ONNX
Runtime's environment, kernel registry and thread pools: ≈ 40 MiB here) and later models reused memory
the allocator kept: ΔRSS read ≈ 40 MiB for whichever model came first and ≈ 3 MiB for the second. So each
model is measured in a fresh Python process of its own (≈ 0.5 s), after a throwaway session has paid the
runtime's set-up: ΔRSS is then the model's own weights, arena and first-run buffers. A forked child was
tried and rejected: it inherits the parent's heap, whose free lists depend on what the parent ran before
(ΔRSS 33 vs 14 MiB for one model). `profile --supernet`'s memory fit (export.calibrate), `bench` and the
host probe all read it here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fine_deploy.errors import FineDeployError
from fine_deploy.runtime.spec import SessionOptions

ISOLATION = "fresh process per artifact, after a throwaway session paid the runtime's one-time set-up"
NONE: dict[str, int | None] = {"rss_increase_bytes": None, "peak_rss_increase_bytes": None,
                               "device_peak_bytes": None}


def rss_bytes() -> int:
    """This process's resident set (psutil)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int | None:
    """The high-water mark since the last reset (psutil does not expose VmHWM)."""
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
    from onnx import TensorProto, helper

    from fine_deploy.runtime.ort import PROVIDERS_BY_BACKEND, ort_session_options

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "warm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    sess = ort.InferenceSession(m.SerializeToString(), ort_session_options(options),
                                providers=list(options.providers or PROVIDERS_BY_BACKEND[backend]))
    sess.run(["y"], {"x": np.zeros((8, 8), np.float32)})


def _measure(path: str, options: SessionOptions, backend: str, shapes: dict, batch: int, warmup: int) -> dict[str, Any]:
    from fine_deploy.runtime import choose_backend, open_session, resolve_artifact

    # "auto" resolved first: warming nothing for it counted ONNX Runtime's one-time set-up as the model's
    backend = choose_backend(resolve_artifact(Path(path)).format, backend)
    _warm_runtime(options, backend)
    peak_ok = _reset_peak()
    rss0 = rss_bytes()
    session = open_session(Path(path), options, backend, shapes=shapes or None)
    mine = {k: v for k, v in shapes.items() if k in {s.name for s in session.inputs}}
    feeds = session.make_feeds(mine, batch=batch, seed=0)
    for _ in range(max(warmup, 1)):
        session.run(feeds)
    rss1, peak1 = rss_bytes(), _peak_bytes()
    out = {
        "rss_increase_bytes": rss1 - rss0 - sum(int(v.nbytes) for v in feeds.values()),
        "peak_rss_increase_bytes": (peak1 - rss0) if peak_ok and peak1 is not None else None,
        "device_peak_bytes": session.peak_device_memory() if hasattr(session, "peak_device_memory") else None,
    }
    session.close()
    return out


def session_memory(
    path: str | os.PathLike, options: SessionOptions | None = None, backend: str = "onnxruntime-cpu",
    shapes: dict[str, tuple[int, ...]] | None = None, batch: int = 1, warmup: int = 1,
) -> tuple[dict[str, int | None], str | None]:
    """ΔRSS / peak ΔRSS (bytes) of opening ``path`` and running it ``warmup`` times, in a fresh process.

    Returns the byte counts and ``None``, or ``None`` counts and why the child failed.
    """
    options = options or SessionOptions(threads=1, spinning=False)
    args = {"path": str(path), "threads": options.threads, "spinning": options.spinning, "backend": backend,
            "shapes": {k: list(v) for k, v in (shapes or {}).items()}, "batch": batch, "warmup": warmup}
    try:
        proc = _child(json.dumps(args), timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return dict(NONE), str(e)[:200]
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return dict(NONE), tail[:200]
    return json.loads(lines[-1]), None


def runtime_rss_bytes() -> int:
    """Resident memory ONNX Runtime adds to a process: its libraries plus one tiny session."""
    out = _child(RUNTIME, timeout=120)
    if out.returncode != 0:
        raise FineDeployError(f"measuring ONNX Runtime's own memory failed: {(out.stderr.strip() or '?')[-200:]}")
    return int(out.stdout.strip().splitlines()[-1])


RUNTIME = "runtime"  # the child's argument for runtime_rss_bytes


def _child(arg: str, timeout: float) -> subprocess.CompletedProcess:
    """This module in a fresh Python process; it imports this very fine_deploy (a source checkout may shadow an
    installed one)."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "fine_deploy.runtime.rss", arg], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _main(argv: list[str]) -> int:
    if argv[0] == RUNTIME:
        import numpy  # noqa: F401  loaded before the baseline: not the runtime's
        import onnx  # noqa: F401

        before = rss_bytes()
        _warm_runtime(SessionOptions(threads=1, spinning=False), "onnxruntime-cpu")
        print(rss_bytes() - before)
        return 0
    a = json.loads(argv[0])
    options = SessionOptions(threads=a["threads"], spinning=a["spinning"])
    shapes = {k: tuple(v) for k, v in a["shapes"].items()}
    print(json.dumps(_measure(a["path"], options, a["backend"], shapes, a["batch"], a["warmup"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
