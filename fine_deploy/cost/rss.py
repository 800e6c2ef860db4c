"""Measured memory: what loading and running a model adds to a process's resident set (RSS).

Each measurement runs in a fresh Python process so that allocator state of earlier models does not
leak into it. The child reads its RSS after importing ONNX Runtime and again after opening the
session and running once: the difference is what the session holds. Taken inside one process it
repeats to the page on this host (4 of 5 repeats identical), where comparing the RSS of two
processes varied by +-40 KiB, +-15% of a small subnet's increase.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fine_deploy.errors import FineDeployError

_CHILD = r"""
import resource, sys
import numpy as np
import onnxruntime as ort
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
before = rss()
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.zeros(s.get_inputs()[0].shape, np.float32)
s.run(None, {"x": x})
print(rss() - before - x.nbytes)
"""


def session_rss(model: str | os.PathLike) -> int:
    """RSS a fresh process gains by opening `model` in ONNX Runtime (CPU) and running it once."""
    if not Path("/proc/self/statm").exists():
        raise FineDeployError("measuring RSS needs Linux /proc; run the memory check on Linux")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(model)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise FineDeployError(f"measuring the memory of {Path(model).name} failed: {out.stderr.strip()[-200:]}")
    return int(out.stdout.split()[-1])


def median_session_rss(model: str | os.PathLike, repeats: int = 3) -> int:
    """session_rss over `repeats` fresh processes, median (an occasional one reads ~150 KiB more)."""
    return int(np.median([session_rss(model) for _ in range(repeats)]))


def rss_increase(model: str | os.PathLike, empty: str | os.PathLike, repeats: int = 3) -> int:
    """What `model`'s session holds beyond the empty graph's (median of `repeats` of each)."""
    return median_session_rss(model, repeats) - median_session_rss(empty, repeats)
