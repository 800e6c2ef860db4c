"""A whole text-to-image pipeline run end to end on an artifact's runtime: tokenize, encode, denoise with
classifier-free guidance, decode.

The parts come from an export (each component's graph on ONNX Runtime / TensorRT / Core ML, or the
diffusers folder in PyTorch) or from a converted supernet (PyTorch). What the stock pipeline class does
around the networks (how text-encoder outputs become the denoiser's conditioning, how latents are scaled
for the VAE) is the pipeline adapter's (`fine_deploy.pipelines`), so the same seed and latents give the
image the stock diffusers pipeline gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_deploy.components import component_for
from fine_deploy.errors import FineDeployError
from fine_deploy.pipelines import Pipeline, pipeline_for
from fine_deploy.sample.denoisers import Denoiser
from fine_deploy.sample.loop import denoise

Network = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class PipelineParts:
    pipeline: Pipeline
    denoiser_config: dict[str, Any]
    tokenizers: dict[str, Any]  # text encoder name -> its tokenizer
    encoders: dict[str, Network]  # text encoder name -> input_ids -> outputs
    vae: Network  # latent_sample -> sample
    vae_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    runtime: str
    options: dict[str, Any]  # the pipeline's own settings in model_index.json (force_zeros_for_empty_prompt, ...)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae_config.get("block_out_channels") or [0]) - 1)

    def encode(self, prompts: list[str], latent_resolution: int) -> dict[str, torch.Tensor]:
        """The denoiser's conditioning for each prompt (one text-encoder call per prompt and encoder)."""
        encoded = []
        for enc, _ in self.pipeline.text_encoders:
            tok = self.tokenizers[enc]
            rows = []
            for p in prompts:
                ids = tok(p, padding="max_length", max_length=tok.model_max_length, truncation=True,
                          return_tensors="np").input_ids.astype(np.int32)
                rows.append({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in
                             self.encoders[enc]({"input_ids": ids}).items()})
            encoded.append({k: torch.cat([r[k] for r in rows]) for k in rows[0]})
        return self.pipeline.conditions(encoded, self.denoiser_config, latent_resolution * self.vae_scale)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Images [n, 3, H, W] in [0, 1], as the stock pipelines post-process them."""
        z = self.pipeline.latents_for_vae(latents, self.vae_config).numpy().astype(np.float32)
        out = [self.vae({"latent_sample": z[i:i + 1]})["sample"] for i in range(len(z))]
        return np.clip(np.concatenate(out).astype(np.float32) / 2 + 0.5, 0.0, 1.0)


def generate(parts: PipelineParts, denoiser: Denoiser, prompts: list[str], scheduler: Any, *, steps: int, seed: int,
             guidance: float, negative: str = "", on_step: Callable[[], None] | None = None) -> np.ndarray:
    """One image per prompt (image i seeded `seed + i`), [n, 3, H, W] in [0, 1]."""
    res = denoiser.info.resolution
    cond = parts.encode(prompts, res)
    null = parts.pipeline.unconditional(cond, negative, lambda: parts.encode([negative] * len(prompts), res),
                                        parts.options) if guidance != 1.0 else None
    latents = denoise(denoiser, scheduler, len(prompts), steps=steps, seed=seed, cond=cond, guidance=guidance,
                      null=null, on_step=on_step)
    return parts.decode(latents)


def _torch_network(kind: Any, model: torch.nn.Module) -> Network:
    graph = kind.graph(model.float().eval())

    @torch.no_grad()
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = graph(*[torch.from_numpy(v) for v in feeds.values()])
        out = out if isinstance(out, tuple) else (out,)
        return {k: v.numpy() for k, v in zip(kind.output_names, out, strict=True)}

    return run


def _session_network(session: Any) -> Network:
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return session.run(feeds)

    return run


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _options(index: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}


def parts_from_folders(pipeline_class: str, denoiser_config: dict[str, Any], components: dict[str, dict[str, Any]],
                       folder_of: Callable[[str], Path], options: dict[str, Any]) -> PipelineParts:
    """Parts in PyTorch from component folders (a converted supernet's, or an exported diffusers folder)."""
    from fine_deploy.fileio import read_json

    pipe = pipeline_for(pipeline_class)
    encoders, tokenizers = {}, {}
    for enc, tok in pipe.text_encoders:
        kind = component_for(components[enc]["class"])
        encoders[enc] = _torch_network(kind, kind.load(folder_of(enc), components[enc]["class"]))
        tokenizers[enc] = _load_tokenizer(folder_of(tok))
    vae_kind = component_for(components[pipe.vae]["class"])
    vae = vae_kind.load(folder_of(pipe.vae), components[pipe.vae]["class"])
    sched = read_json(folder_of("scheduler") / "scheduler_config.json", missing="restore the pipeline's scheduler",
                      invalid="restore the pipeline's scheduler")
    return PipelineParts(pipe, denoiser_config, tokenizers, encoders, _torch_network(vae_kind, vae),
                         dict(vae.config), sched, "torch", options)


def parts_from_export(directory: Path, manifest: Any, backend: str, threads: int | None) -> PipelineParts:
    """Parts of an exported pipeline on the artifact's runtime (each component's own graph file)."""
    from fine_deploy.fileio import read_json

    comps = manifest.components
    index = read_json(directory / "model_index.json", missing="re-export", invalid="re-export")
    if manifest.format == "diffusers":
        recs = {k: {"class": v[1]} for k, v in index.items() if isinstance(v, list) and v[0]}
        return parts_from_folders(index["_class_name"], read_json(directory / manifest.model / "config.json",
                                  missing="re-export", invalid="re-export"), recs, lambda n: directory / n,
                                  _options(index))
    from fine_deploy.runtime import SessionOptions, open_session

    pipe = pipeline_for(index["_class_name"])
    opts = SessionOptions(threads=threads)
    encoders = {enc: _session_network(open_session(directory / comps[enc]["model"], opts, backend))
                for enc, _ in pipe.text_encoders}
    tokenizers = {enc: _load_tokenizer(directory / tok) for enc, tok in pipe.text_encoders}
    vae_name = next(n for n, c in comps.items() if c["role"] == "vae")
    vae_session = open_session(directory / comps[vae_name]["model"], opts, backend)
    vae = _session_network(vae_session)
    vae_config = read_json(directory / comps[vae_name]["model"].rsplit("/", 1)[0] / "config.json",
                           missing="re-export", invalid="re-export")
    sched = read_json(directory / "scheduler" / "scheduler_config.json", missing="re-export", invalid="re-export")
    den_cfg = read_json(directory / manifest.model.rsplit("/", 1)[0] / "config.json", missing="re-export",
                        invalid="re-export")
    return PipelineParts(pipe, den_cfg, tokenizers, encoders, vae, vae_config, sched, vae_session.backend,
                         _options(index))


def parts_of_supernet(sn: Any) -> PipelineParts:
    if not sn.components:
        raise FineDeployError("this supernet is a denoiser alone; --prompt needs a converted pipeline folder "
                              "(fine-deploy convert --from-diffusers PIPELINE_DIR)")
    sn.check_components()
    return parts_from_folders(sn.spec.pipeline["class"], sn.spec.config, sn.components, sn.component_dir,
                              _options(sn.spec.pipeline["model_index"]))
