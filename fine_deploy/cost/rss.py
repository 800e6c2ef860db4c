"""Measured memory: what loading and running a model adds to a process's resident set (RSS).

Each measurement runs in a fresh Python process so that allocator state of earlier models does not
leak into it, and is compared with the same process code running the empty graph of the same input.
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
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.zeros(s.get_inputs()[0].shape, np.float32)
s.run(None, {"x": x})
print(rss() - x.nbytes)
"""


def process_rss(model: str | os.PathLike) -> int:
    """RSS of a fresh process after loading `model` in ONNX Runtime (CPU) and running it once."""
    if not Path("/proc/self/statm").exists():
        raise FineDeployError("measuring RSS needs Linux /proc; run the memory check on Linux")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(model)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise FineDeployError(f"measuring the memory of {Path(model).name} failed: {out.stderr.strip()[-200:]}")
    return int(out.stdout.split()[-1])


def rss_increase(model: str | os.PathLike, empty: str | os.PathLike, repeats: int = 1) -> int:
    """RSS of running `model` minus RSS of running the empty graph `empty` (median of `repeats`)."""
    return int(np.median([process_rss(model) - process_rss(empty) for _ in range(repeats)]))
