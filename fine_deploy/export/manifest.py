"""manifest.json of an export directory: what was exported, from what, and how well it matches PyTorch.

`fine_deploy.runtime` reads `model` and `inputs[*].shape` of it to open and feed the artifact; the rest
lets a reader trust the files without this project: the plan it came from, each layer's kernel form as
exported, every file with its sha256, parity results and tool versions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fine_deploy.fileio import atomic_write_json, sha256_file
from fine_deploy.schemas import MANIFEST as MANIFEST_CONTRACT
from fine_deploy.schemas import malformed, read_manifest

SCHEMA = MANIFEST_CONTRACT.schema  # fine_deploy.runtime.artifact reads it with the same reader
FORMAT = MANIFEST_CONTRACT.tag[1]
MANIFEST = "manifest.json"
FORMATS = ("onnx", "trt", "coreml", "diffusers")


@dataclass
class Manifest:
    format: str  # onnx | trt | coreml | diffusers
    model: str  # the main file (or folder) inside the directory, relative
    backbone: str  # diffusers class name
    plan: dict[str, Any]  # the plan as given
    supernet: dict[str, Any]  # {"path", "sha256"} of the supernet used
    subnet: dict[str, Any]  # SubnetConfig json
    kernels: dict[str, str]  # layer -> kernel form as exported (every layer present)
    inputs: list[dict[str, Any]]  # [{"name", "shape", "dtype", "range"?}]
    outputs: list[dict[str, Any]]
    options: dict[str, Any]  # fp16, dynamic_batch, opset, batch, resolution, ...
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # relpath -> {"sha256", "bytes"}
    parity: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, Any] = field(default_factory=dict)  # bytes: torch unique params, file initializers
    checks: dict[str, Any] = field(default_factory=dict)  # format-specific checks and their results
    notes: list[str] = field(default_factory=list)  # what the format changed (e.g. forms folded dense)
    tools: dict[str, str | None] = field(default_factory=dict)
    # how to sample it: {"scheduler": "scheduler/scheduler_config.json", "scheduler_source", "guidance_scale",
    # "num_classes", "null_class"}; optional, so schema-1 manifests without it still load
    sampling: dict[str, Any] = field(default_factory=dict)
    # a pipeline export's other components: {name: {"role", "model" (its graph file) | "files" (carried folder),
    # "inputs", "outputs", "parity_rel"}}; `model` above is then the denoiser's file
    components: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA
    kind: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def add_files(self, directory: Path) -> None:
        """Record every file under `directory` (except the manifest) with its size and sha256."""
        for p in sorted(directory.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                rel = p.relative_to(directory).as_posix()
                self.files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}

    def write(self, directory: Path) -> Path:
        return atomic_write_json(directory / MANIFEST, self.to_json())

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        """The manifest of an export directory, read by the one reader (fine_deploy.schemas.read_manifest)."""
        d = read_manifest(directory)
        with malformed(str(Path(directory) / MANIFEST), MANIFEST_CONTRACT.name, MANIFEST_CONTRACT.fix):
            return cls(**{k: v for k, v in d.items() if k in _FIELDS})


_FIELDS = {f.name for f in fields(Manifest)}


def verify_files(directory: str | Path) -> list[str]:
    """Files whose sha256 no longer matches the manifest (empty: the directory is intact)."""
    directory = Path(directory)
    m = Manifest.load(directory)
    bad = []
    for rel, info in m.files.items():
        p = directory / rel
        if not p.is_file() or sha256_file(p) != info["sha256"]:
            bad.append(rel)
    return bad


def tool_versions() -> dict[str, str | None]:
    from fine_deploy.runtime.backends import package_version, runtime_versions

    v = runtime_versions()
    v["diffusers"] = package_version("diffusers")
    return v
