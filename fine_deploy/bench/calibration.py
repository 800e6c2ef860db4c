"""The calibration kernel: a fixed GEMM chain run through ONNX Runtime with the bench's options.

Timed in the same rounds as the models, its median says how fast this machine was during this
run; dividing a model's time by it makes runs from different machines (or a noisy neighbour)
comparable as ratios. ``report`` divides each round's model CPU time by the same round's calibration
CPU time when comparing separate runs (a core slowed by its hyper-thread sibling or a cold cache slows
both alike), and the run medians with ``--normalize``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fine_deploy.bench.synthetic import matmul_chain_model
from fine_deploy.runtime import SessionOptions

SIZE = 192
DEPTH = 2
KERNEL = f"onnxruntime-cpu MatMul chain {DEPTH}x[{SIZE}x{SIZE}]·[{SIZE}x{SIZE}] float32"
FLOPS = 2.0 * DEPTH * SIZE**3


class CalibrationKernel:
    def __init__(self, options: SessionOptions) -> None:
        import onnxruntime as ort

        from fine_deploy.runtime.ort import ort_session_options

        # CPU on purpose, also on GPU machines: the yardstick must not depend on the model's backend.
        self._sess = ort.InferenceSession(
            matmul_chain_model(DEPTH, SIZE, rows=SIZE, seed=12345),
            ort_session_options(SessionOptions(threads=options.threads, spinning=options.spinning)),
            providers=["CPUExecutionProvider"],
        )
        self._feeds = {"x": np.random.default_rng(0).standard_normal((SIZE, SIZE)).astype(np.float32)}
        self.options = options

    def time_once(self) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one run."""
        import time

        c0, t0 = time.process_time(), time.perf_counter()
        self._sess.run(["y"], self._feeds)
        return time.perf_counter() - t0, time.process_time() - c0

    def describe(self) -> dict[str, Any]:
        so = self._sess.get_session_options()
        return {
            "backend": "onnxruntime-cpu",
            "intra_op_num_threads": so.intra_op_num_threads,
            "spinning": self.options.spinning,
        }
