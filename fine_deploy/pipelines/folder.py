"""A diffusers pipeline folder (model_index.json + one folder per component), read and checked whole.

Everything a later step needs is checked here, before any heavy work: the pipeline class is one this
project runs whole, its denoiser has a backbone adapter, every component it names is there with
safetensors weights, and each tokenizer fits its text encoder. `describe` then counts what each
network costs per call (parameters, FLOPs on a meta-device skeleton, activation estimate) so that
`plan` can budget the whole pipeline without loading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fine_deploy.components import Carried, Component, Tokenizer, component_for
from fine_deploy.errors import FineDeployError
from fine_deploy.fileio import read_json, sha256_file
from fine_deploy.pipelines import Pipeline, pipeline_for

MODEL_INDEX = "model_index.json"
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class FolderComponent:
    name: str
    library: str
    class_name: str
    path: Path
    kind: Component


@dataclass
class PipelineFolder:
    path: Path
    index: dict[str, Any]
    pipeline: Pipeline
    denoiser: Path
    components: dict[str, FolderComponent]
    dropped: list[str] = field(default_factory=list)  # optional components present in the source, not carried


def is_pipeline_folder(path: Path) -> bool:
    return (path / MODEL_INDEX).is_file() and not (path / "config.json").is_file()


def _entry(index: dict[str, Any], name: str) -> tuple[str, str] | None:
    v = index.get(name)
    if isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v):
        return v[0], v[1]
    return None


def read_pipeline_folder(path: str | Path) -> PipelineFolder:
    path = Path(path)
    where = f"{path / MODEL_INDEX}: "
    index = read_json(path / MODEL_INDEX, missing="pass a folder written by a diffusers pipeline's save_pretrained",
                      invalid="re-save the pipeline")
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise FineDeployError(f"{where}no _class_name; pass a folder written by a diffusers pipeline's save_pretrained")
    pipe = pipeline_for(index["_class_name"], where)
    needed = [pipe.denoiser, pipe.vae, "scheduler", *[n for pair in pipe.text_encoders for n in pair]]
    for name in needed:
        if _entry(index, name) is None:
            raise FineDeployError(f"{where}component {name!r} is missing or null; a {pipe.class_name} needs "
                                  f"{', '.join(needed)}")
    den = path / pipe.denoiser
    if not (den / "config.json").is_file():
        raise FineDeployError(f"{den}: missing (model_index.json names it); restore the pipeline folder")
    from fine_deploy.backbones import adapter_for

    cfg = read_json(den / "config.json", missing="restore the pipeline folder", invalid="re-save the pipeline")
    adapter_for(str(cfg.get("_class_name")))  # a denoiser without an adapter is refused here
    comps: dict[str, FolderComponent] = {}
    dropped = []
    for name in index:
        if name.startswith("_") or name == pipe.denoiser or _entry(index, name) is None:
            continue
        library, cls = _entry(index, name)  # type: ignore[misc]
        if name in pipe.optional:
            dropped.append(name)
            continue
        kind = component_for(cls, where)
        folder = path / name
        if not folder.is_dir() or not any(folder.iterdir()):
            raise FineDeployError(f"{folder}: missing (model_index.json names {name} = {cls}); restore the "
                                  "pipeline folder")
        if not isinstance(kind, Carried) and not any(folder.glob("*.safetensors")):
            pickled = [p.name for p in folder.iterdir() if p.suffix in PICKLES]
            raise FineDeployError(f"{folder}: no .safetensors weights{' (only ' + pickled[0] + ')' if pickled else ''}"
                                  "; pickled weights are never read — re-save with safe_serialization=True")
        comps[name] = FolderComponent(name, library, cls, folder, kind)
    folder = PipelineFolder(path, index, pipe, den, comps, dropped)
    check_tokenizers(folder)
    return folder


def _encoder_config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FineDeployError(f"{folder}: transformers could not read the text encoder's config ({first})") from None


def check_tokenizers(folder: PipelineFolder) -> None:
    for enc, tok in folder.pipeline.text_encoders:
        t = folder.components[tok]
        assert isinstance(t.kind, Tokenizer)
        tokenizer = t.kind.load(t.path, t.class_name)
        t.kind.check_matches(tokenizer, _encoder_config(folder.components[enc].path),
                             f"{folder.path}: {tok} vs {enc}")


def tokenizer_length(folder: Path) -> int:
    """A tokenizer's padded prompt length (model_max_length of its tokenizer_config.json)."""
    try:
        return int(json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        raise FineDeployError(f"{folder}: tokenizer_config.json has no model_max_length; re-save the tokenizer "
                              "with save_pretrained") from None


def token_lengths(pipe: Pipeline, folder_of: Any) -> dict[str, int]:
    """Each text encoder's prompt length (its tokenizer's), by text encoder name, in prompt order."""
    return {enc: tokenizer_length(folder_of(tok)) for enc, tok in pipe.text_encoders}


def files_of(folder: Path) -> dict[str, str]:
    """sha256 of every file a component folder holds (pickles are not carried)."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix not in PICKLES and not p.name.startswith(".")}


def skeleton(c: FolderComponent) -> torch.nn.Module:
    """The network built from its config on the meta device: shapes and FLOPs without loading weights."""
    cls = c.kind.model_class(c.class_name)
    with torch.device("meta"):
        if c.library == "transformers":
            from transformers import AutoConfig

            return cls._from_config(AutoConfig.from_pretrained(str(c.path))).eval()
        return cls.from_config(cls.load_config(str(c.path))).eval()


def describe(folder: PipelineFolder, latent_resolution: int) -> dict[str, dict[str, Any]]:
    """supernet.json's record of each carried component: class, role, files and hashes, per-call costs."""
    out: dict[str, dict[str, Any]] = {}
    lengths = token_lengths(folder.pipeline, lambda tok: folder.components[tok].path)
    for name, c in folder.components.items():
        rec: dict[str, Any] = {"library": c.library, "class": c.class_name, "role": c.kind.role,
                               "files": files_of(c.path)}
        if not isinstance(c.kind, Carried):
            model = skeleton(c)
            shape = {"tokens": lengths[name]} if c.kind.role == "text_encoder" else \
                {"latent_resolution": latent_resolution}
            inputs = {k: v.to("meta") for k, v in c.kind.example_inputs(model, 1, **shape).items()}
            rec.update(c.kind.describe(model, inputs))
            rec["at"] = shape
        out[name] = rec
    return out
