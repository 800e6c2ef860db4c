"""Find the model file and declared input shapes of an artifact path.

Accepted: a ``.onnx`` file, a ``.engine``/``.plan`` TensorRT engine, an ``.mlpackage``/``.mlmodel``,
or a directory holding ``manifest.json`` (written by ``fine-deploy export``) or exactly one of those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fine_deploy.errors import FineDeployError

FORMAT_BY_SUFFIX = {
    ".onnx": "onnx",
    ".engine": "trt",
    ".plan": "trt",
    ".trt": "trt",
    ".mlpackage": "coreml",
    ".mlmodel": "coreml",
}


@dataclass
class Artifact:
    model: Path
    format: str  # onnx | trt | coreml
    declared_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # [low, high) of integer inputs (class labels, timesteps) as the exporter's manifest declares them
    declared_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    @property
    def precision(self) -> str | None:
        """The precision the export wrote (manifest options; exports older than the field: fp16 or fp32), None
        for a bare model file."""
        if self.manifest is None:
            return None
        options = self.manifest.get("options") or {}
        return options.get("precision") or ("fp16" if options.get("fp16") else "fp32")


def _model_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.suffix in FORMAT_BY_SUFFIX and not p.name.startswith(".")
    )


def resolve_artifact(path: str | Path) -> Artifact:
    path = Path(path)
    if not path.exists():
        raise FineDeployError(f"{path} does not exist; pass an exported artifact directory or a model file")
    if path.is_dir() and path.suffix != ".mlpackage":
        manifest_path = path / "manifest.json"
        if manifest_path.exists():
            return _from_manifest(path, manifest_path)
        files = _model_files(path)
        if len(files) != 1:
            found = ", ".join(p.name for p in files) or "none"
            raise FineDeployError(
                f"{path} has no manifest.json and {len(files)} model files ({found}); "
                "pass the model file itself or a directory written by fine-deploy export"
            )
        path = files[0]
    fmt = FORMAT_BY_SUFFIX.get(path.suffix)
    if fmt is None:
        raise FineDeployError(
            f"{path.name} is not a model this tool can run; "
            "use .onnx, .engine/.plan, .mlpackage or an export directory"
        )
    sibling = path.parent / "manifest.json"
    if sibling.is_file():  # the model file of an export: its manifest declares shapes and input ranges
        art = _from_manifest(path.parent, sibling)
        if art.model == path.resolve():
            return art
    return Artifact(model=path, format=fmt)


def _from_manifest(directory: Path, manifest_path: Path) -> Artifact:
    from fine_deploy.schemas import read_manifest

    manifest = read_manifest(directory)  # the one manifest reader: kind, schema, fields, shapes, ranges
    rel = manifest["model"]
    model = (directory / rel).resolve()
    if not model.exists():
        raise FineDeployError(f"{manifest_path} names {rel}, which is missing; re-run fine-deploy export")
    fmt = FORMAT_BY_SUFFIX.get(model.suffix)
    if fmt is None:
        raise FineDeployError(
            f"{manifest_path} is a {manifest.get('format')!r} artifact whose model {rel} cannot be "
            "benchmarked here; export with --format onnx, trt or coreml"
        )
    declared: dict[str, tuple[int, ...]] = {}
    for spec in manifest["inputs"]:
        shape = spec["shape"]
        if all(isinstance(d, int) and d > 0 for d in shape):
            declared[spec["name"]] = tuple(shape)
    ranges = {spec["name"]: (spec["range"][0], spec["range"][1]) for spec in manifest["inputs"] if "range" in spec}
    return Artifact(model=model, format=fmt, declared_shapes=declared, declared_ranges=ranges, manifest=manifest)
