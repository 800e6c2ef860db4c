"""Core ML sessions: prediction through coremltools, which only runs on macOS."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from fine_deploy.errors import FineDeployError
from fine_deploy.runtime.session import Session
from fine_deploy.runtime.spec import SessionOptions, TensorSpec

# Core ML feature types -> numpy dtype names.
_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32"}
COMPUTE_UNITS = {"all": "ALL", "cpu": "CPU_ONLY", "gpu": "CPU_AND_GPU", "ane": "CPU_AND_NE"}


def _spec(feature: Any) -> TensorSpec:
    arr = feature.type.multiArrayType
    dims: tuple[int | str, ...] = tuple(int(d) for d in arr.shape)
    return TensorSpec(feature.name, dims, _ARRAY_DTYPES.get(arr.dataType, "float32"))


class CoreMLSession(Session):
    def __init__(
        self,
        model: Path,
        options: SessionOptions,
        declared_shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        if sys.platform != "darwin":
            raise FineDeployError(
                f"Core ML models ({model.name}) can only be run on macOS; bench it on a Mac, "
                "or bench the ONNX export here"
            )
        try:
            import coremltools as ct
        except ImportError:
            raise FineDeployError(
                "benchmarking Core ML needs coremltools; pip install 'fine-deploy[coreml]'"
            ) from None
        self._ct = ct
        units = (options.providers or ("all",))[0].lower()
        if units not in COMPUTE_UNITS:
            raise FineDeployError(
                f"unknown Core ML compute units {units!r}; use one of {', '.join(COMPUTE_UNITS)}"
            )
        self._model = ct.models.MLModel(
            str(model), compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[units])
        )
        desc = self._model.get_spec().description
        self.inputs = [_spec(f) for f in desc.input]
        self.outputs = [_spec(f) for f in desc.output]
        self.model_path = model
        self.options = options
        self.backend = "coreml"
        self.providers = [f"CoreML:{COMPUTE_UNITS[units]}"]
        self.declared_shapes = dict(declared_shapes or {})

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._model.predict(feeds)
        return {k: np.asarray(v) for k, v in out.items()}

    def versions(self) -> dict[str, str | None]:
        return {"coremltools": self._ct.__version__}
