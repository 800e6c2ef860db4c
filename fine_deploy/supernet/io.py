"""Reading and writing a SUPERNET directory (supernet.json + weights.safetensors).

Loading checks, in this order, so that each failure names its real cause: the spec's format and
schema, that the weights file parses (a truncated file does not), that every tensor the spec lists
is there with its shape, and finally the content hash. Nothing is ever unpickled.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import atomic_directory, atomic_write_json, read_json, sha256_file, sha256_file_remembered
from fine_deploy.supernet.spec import COMPONENTS_DIR, SPEC_FILE, WEIGHTS_FILE, SupernetSpec


def read_spec(path: Path) -> SupernetSpec:
    spec_path = path / SPEC_FILE
    if not path.is_dir() or not spec_path.is_file():
        raise FineDeployError(
            f"{path}: not a supernet directory (no {SPEC_FILE}); create one with "
            "`fine-deploy convert --from-diffusers DIR -o SUPERNET` or omit it to use the default"
        )
    raw = read_json(spec_path, missing="re-create the supernet", invalid="re-create the supernet")
    return SupernetSpec.from_json(raw, str(spec_path))


def read_tensors(path: Path, spec: SupernetSpec) -> dict[str, torch.Tensor]:
    wpath = path / WEIGHTS_FILE
    if not wpath.is_file():
        raise FineDeployError(f"{wpath}: missing; the supernet directory is incomplete, re-create it")
    fix = "re-create the supernet or restore the file"
    try:
        with safe_open(str(wpath), framework="pt") as f:
            names = set(f.keys())
            for name, shape in spec.tensors.items():
                if name not in names:
                    raise FineDeployError(f"{wpath}: tensor {name!r} listed in {SPEC_FILE} is missing; {fix}")
                got = list(f.get_slice(name).get_shape())
                if got != list(shape):
                    raise FineDeployError(
                        f"{wpath}: tensor {name!r} has shape {got} but {SPEC_FILE} expects {list(shape)}; {fix}"
                    )
            extra = sorted(names - set(spec.tensors))
            if extra:
                raise FineDeployError(f"{wpath}: unexpected tensor {extra[0]!r} not in {SPEC_FILE}; {fix}")
            tensors = {name: f.get_tensor(name) for name in spec.tensors}
    except SafetensorError as e:
        raise FineDeployError(f"{wpath}: unreadable safetensors file (truncated or corrupt: {e}); {fix}") from None
    if spec.weights_sha256 and sha256_file_remembered(wpath) != spec.weights_sha256:
        raise FineDeployError(f"{wpath}: content hash differs from the one in {SPEC_FILE} (modified or corrupt); {fix}")
    return tensors


def write_supernet(path: Path, spec: SupernetSpec, tensors: dict[str, torch.Tensor],
                   components: dict[str, Path] | None = None) -> None:
    """Write the directory atomically; `components` (name -> source folder) are copied into components/<name>/,
    the files supernet.json lists for each, checked against their recorded sha256."""
    spec.tensors = {k: list(v.shape) for k, v in sorted(tensors.items())}
    with atomic_directory(path) as tmp:
        for name, src in (components or {}).items():
            copy_component(src, tmp / COMPONENTS_DIR / name, spec.pipeline["components"][name]["files"])
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE))
        spec.weights_sha256 = sha256_file(tmp / WEIGHTS_FILE)
        atomic_write_json(tmp / SPEC_FILE, spec.to_json())


def copy_component(src: Path, dst: Path, files: dict[str, str]) -> None:
    for rel, digest in files.items():
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, out)
        if sha256_file(out) != digest:
            raise FineDeployError(f"{src / rel}: changed while being copied (sha256 differs); run the command again")


def check_components(path: Path, spec: SupernetSpec) -> None:
    """Every carried component file is there with its recorded sha256 (checked before it is exported)."""
    for name, rec in (spec.pipeline.get("components") or {}).items():
        for rel, digest in rec["files"].items():
            f = path / COMPONENTS_DIR / name / rel
            if not f.is_file():
                raise FineDeployError(f"{f}: missing; the supernet's {name} is incomplete — re-create the supernet")
            if sha256_file_remembered(f) != digest:
                raise FineDeployError(f"{f}: content differs from the sha256 in {SPEC_FILE} (modified or corrupt); "
                                      "re-create the supernet or restore the file")
