"""Exporters: fold U·diag(σ)·Vᵀ into dense / low-rank / shared-basis kernels and write ONNX, TensorRT
bundles, Core ML packages and diffusers folders, each checked against PyTorch (DESIGN §4, §6)."""

from __future__ import annotations

from fine_deploy.export.api import export
from fine_deploy.export.fold import FoldedSubnet, fold_subnet, resolve_forms, uniform_kernels
from fine_deploy.export.manifest import Manifest, verify_files

__all__ = ["FoldedSubnet", "Manifest", "export", "fold_subnet", "resolve_forms", "uniform_kernels", "verify_files"]
