"""Capabilities as data: which runtimes are usable here, found without importing any of them.

Listing what exists must stay cheap and must never fail because an optional runtime is broken,
so only ``importlib.util.find_spec``, package metadata and a few files are consulted.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "coreml")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver is loaded (desktop/datacenter GPU or Jetson), judged from files only."""
    if sys.platform.startswith("linux"):
        return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvhost-ctrl-gpu").exists()
    if sys.platform == "win32":
        return ctypes.util.find_library("nvcuda") is not None
    return False


def _ort_provider_library(name: str) -> bool:
    """onnxruntime-gpu ships one shared library per execution provider next to its bindings."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        return False
    capi = Path(spec.origin).parent / "capi"
    ext = ".dll" if sys.platform == "win32" else ".so"
    prefix = "" if sys.platform == "win32" else "lib"
    return (capi / f"{prefix}onnxruntime_providers_{name}{ext}").exists()


def available_backends() -> dict[str, bool]:
    """Backend name -> usable on this machine. Never imports onnxruntime, tensorrt or coremltools."""
    ort = _has_module("onnxruntime")
    gpu = has_nvidia_gpu()
    return {
        "onnxruntime-cpu": ort,
        "onnxruntime-cuda": ort and gpu and _ort_provider_library("cuda"),
        "onnxruntime-tensorrt": ort and gpu and _ort_provider_library("tensorrt") and _has_module("tensorrt"),
        "tensorrt": gpu and _has_module("tensorrt") and _has_module("torch"),
        # coremltools installs everywhere but only predicts on macOS.
        "coreml": sys.platform == "darwin" and _has_module("coremltools"),
    }


def package_version(name: str) -> str | None:
    """Installed distribution version, read from metadata (no import)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, str | None]:
    ort = package_version("onnxruntime") or package_version("onnxruntime-gpu")
    return {
        "onnxruntime": ort,
        "onnx": package_version("onnx"),
        "numpy": package_version("numpy"),
        "torch": package_version("torch"),
        "tensorrt": package_version("tensorrt") or package_version("tensorrt-cu12"),
        "coremltools": package_version("coremltools"),
        "fine-deploy": package_version("fine-deploy"),
    }


def cpu_affinity() -> int:
    """Cores this process may run on (what a CI container really grants, not the host count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
