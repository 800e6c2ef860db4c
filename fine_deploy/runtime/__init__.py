"""One Session interface over ONNX Runtime, TensorRT and Core ML, used by ``profile`` and ``bench``.

    from fine_deploy.runtime import open_session, SessionOptions
    with open_session("export/", SessionOptions(threads=2)) as s:
        feeds = s.make_feeds()
        seconds = s.time_runs(feeds, 30)

Heavy runtimes are imported only when a session of theirs is opened; ``available_backends`` lists
what is usable without importing any of them.
"""

from __future__ import annotations

from pathlib import Path

from fine_deploy.errors import FineDeployError
from fine_deploy.runtime.artifact import Artifact, resolve_artifact
from fine_deploy.runtime.backends import BACKENDS, available_backends
from fine_deploy.runtime.fingerprint import machine_fingerprint
from fine_deploy.runtime.session import Session
from fine_deploy.runtime.spec import SessionOptions, TensorSpec

__all__ = [
    "BACKENDS",
    "Artifact",
    "Session",
    "SessionOptions",
    "TensorSpec",
    "available_backends",
    "choose_backend",
    "machine_fingerprint",
    "open_session",
    "resolve_artifact",
]

_COMPATIBLE = {
    "onnx": ("onnxruntime-cuda", "onnxruntime-cpu", "onnxruntime-tensorrt", "tensorrt"),
    "trt": ("tensorrt",),
    "coreml": ("coreml",),
}


def choose_backend(fmt: str, backend: str = "auto") -> str:
    """The backend that runs a model of format ``fmt`` (onnx | trt | coreml). ``auto`` prefers the
    CUDA provider for ONNX when usable (never the TensorRT EP: its engine build takes minutes)."""
    allowed = _COMPATIBLE[fmt]
    if backend == "auto":
        if fmt == "onnx":
            return "onnxruntime-cuda" if available_backends()["onnxruntime-cuda"] else "onnxruntime-cpu"
        return allowed[0]
    if backend not in BACKENDS:
        raise FineDeployError(f"unknown backend {backend!r}; use auto or one of {', '.join(BACKENDS)}")
    if backend not in allowed:
        raise FineDeployError(f"a {fmt} model cannot run on {backend}; use one of {', '.join(allowed)}")
    return backend


def open_session(
    model: str | Path,
    options: SessionOptions = SessionOptions(),
    backend: str = "auto",
    *,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Session:
    """Load ``model`` (a model file or an artifact directory) on ``backend``.

    ``shapes`` is needed only when TensorRT builds an engine from an ONNX file with dynamic inputs.
    """
    artifact = resolve_artifact(model)
    session = _open(artifact, options, choose_backend(artifact.format, backend), shapes)
    session.declared_ranges = artifact.declared_ranges
    return session


def _open(artifact, options: SessionOptions, chosen: str, shapes) -> Session:
    if chosen.startswith("onnxruntime"):
        from fine_deploy.runtime.ort import OrtSession

        return OrtSession(artifact.model, options, chosen, artifact.declared_shapes)
    if chosen == "tensorrt":
        from fine_deploy.runtime.trt import TrtSession

        return TrtSession(artifact.model, options, artifact.declared_shapes, shapes)
    from fine_deploy.runtime.coreml import CoreMLSession

    return CoreMLSession(artifact.model, options, artifact.declared_shapes)
