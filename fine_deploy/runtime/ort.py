"""ONNX Runtime sessions (CPU, CUDA and TensorRT execution providers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fine_deploy.errors import FineDeployError
from fine_deploy.runtime.session import Session
from fine_deploy.runtime.spec import ORT_TYPES, SessionOptions, TensorSpec

PROVIDERS_BY_BACKEND = {
    "onnxruntime-cpu": ("CPUExecutionProvider",),
    "onnxruntime-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "onnxruntime-tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


def _spec(arg: Any) -> TensorSpec:
    dims: list[int | str] = []
    for i, d in enumerate(arg.shape or []):
        dims.append(d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) and d else f"dim{i}"))
    return TensorSpec(arg.name, tuple(dims), ORT_TYPES.get(arg.type, arg.type))


def ort_session_options(options: SessionOptions) -> Any:
    """onnxruntime.SessionOptions for ``options``: fixed thread count, spinning as asked,
    sequential execution so that one run uses one intra-op pool and nothing else."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(options.threads or 0)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if options.spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3
    return so


class OrtSession(Session):
    def __init__(
        self,
        model: Path,
        options: SessionOptions,
        backend: str,
        declared_shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        import onnxruntime as ort

        providers = options.providers or PROVIDERS_BY_BACKEND[backend]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise FineDeployError(
                f"ONNX Runtime here lacks {', '.join(missing)} "
                f"(has {', '.join(ort.get_available_providers())}); "
                "install onnxruntime-gpu for CUDA/TensorRT or use --backend onnxruntime-cpu"
            )
        try:
            self._sess = ort.InferenceSession(
                str(model), ort_session_options(options), providers=list(providers)
            )
        except Exception as e:  # ORT raises its own exception types for corrupt/unsupported graphs
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FineDeployError(
                f"ONNX Runtime cannot load {model.name}: {first}; re-export the model"
            ) from None
        self.model_path = model
        self.options = options
        self.backend = backend
        self.providers = list(self._sess.get_providers())
        self.inputs = [_spec(a) for a in self._sess.get_inputs()]
        self.outputs = [_spec(a) for a in self._sess.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self.declared_shapes = dict(declared_shapes or {})

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self._sess.run(self._output_names, feeds), strict=True))

    def versions(self) -> dict[str, str | None]:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        so = self._sess.get_session_options()
        d["session_config"] = {
            "intra_op_num_threads": so.intra_op_num_threads,
            "inter_op_num_threads": so.inter_op_num_threads,
            "session.intra_op.allow_spinning": "1" if self.options.spinning else "0",
            "execution_mode": "sequential",
            "graph_optimization_level": "all",
        }
        return d

    def close(self) -> None:
        self._sess = None
