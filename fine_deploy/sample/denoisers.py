"""One call, `pred = denoiser(x, t, cond)`, over a PyTorch module or a runtime Session.

The sampling loop (and the diffusers scheduler inside it) works on torch tensors whatever ran the
network, so two backends given the same seed see exactly the same noise and differ only by what their
networks return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fine_deploy.backbones import adapter_for

CHUNK = 64  # images per network call: bounds activation memory for large batches


@dataclass
class ModelInfo:
    """What the sampler needs to know about a backbone: image shape, classes, other conditioning inputs."""

    backbone: str
    channels: int
    resolution: int
    num_classes: int | None  # class-conditional: labels 0..n-1, and n is the null (unconditional) class
    # other conditioning inputs (text embeddings, pooled projections, micro-conditions): name -> per-image shape
    conditions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    latent: bool = False  # samples are VAE latents, not images

    @property
    def class_conditional(self) -> bool:
        return bool(self.num_classes)

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance applies (a class or text condition to contrast with its null)."""
        return self.class_conditional or bool(self.conditions)

    @classmethod
    def from_config(cls, backbone: str, config: dict[str, Any], resolution: int | None = None,
                    tokens: int | None = None) -> ModelInfo:
        ad = adapter_for(backbone)
        specs = ad.inputs(config, 1, resolution, tokens)
        conds = {s.name: tuple(s.shape[1:]) for s in specs
                 if s.name not in (ad.sample_input, "timestep", "class_labels")}
        return cls(backbone, ad.channels(config), int(resolution or config["sample_size"]),
                   ad.num_classes(config), conds, ad.latent)

    def null(self, cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unconditional inputs: the null class, zero text embeddings (micro-conditions kept)."""
        out = {}
        for k, v in cond.items():
            if k == "class_labels":
                out[k] = torch.full_like(v, int(self.num_classes))
            elif k in KEPT_UNDER_GUIDANCE:
                out[k] = v
            else:
                out[k] = torch.zeros_like(v)
        return out


KEPT_UNDER_GUIDANCE = ("time_ids", "resolution", "aspect_ratio")


def _chunk(cond: dict[str, torch.Tensor] | None, sl: slice) -> dict[str, torch.Tensor] | None:
    return None if cond is None else {k: v[sl] for k, v in cond.items()}


class Denoiser:
    """The network's prediction (ε, v or flow velocity) at timestep `t` for a batch and its conditioning."""

    info: ModelInfo
    runtime: str  # "torch", "onnxruntime-cpu", "tensorrt", ...

    def __call__(self, x: torch.Tensor, t: float, cond: dict[str, torch.Tensor] | None) -> torch.Tensor:
        out = [self._run(x[i:i + CHUNK], t, _chunk(cond, slice(i, i + CHUNK))) for i in range(0, len(x), CHUNK)]
        eps = torch.cat(out).float()
        c = self.info.channels
        # learned-variance models (out_channels = 2·in) return [ε, variance]; samplers here use ε
        return eps[:, :c] if eps.shape[1] == 2 * c else eps

    def _run(self, x: torch.Tensor, t: float, cond: dict[str, torch.Tensor] | None) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime}

    def close(self) -> None:
        """Release the runtime (GPU memory) early."""


class TorchDenoiser(Denoiser):
    def __init__(self, model: nn.Module, info: ModelInfo, what: str = "torch") -> None:
        self.model = model.eval().float()
        self.info = info
        self.runtime = "torch"
        self.what = what
        self.adapter = adapter_for(info.backbone)

    @torch.no_grad()
    def _run(self, x: torch.Tensor, t: float, cond: dict[str, torch.Tensor] | None) -> torch.Tensor:
        tt = torch.full((len(x),), float(t))
        cond = {k: (v.long() if not v.is_floating_point() else v) for k, v in (cond or {}).items()}
        return self.adapter.run(self.model, {self.adapter.sample_input: x, "timestep": tt, **cond})

    def describe(self) -> dict[str, Any]:
        return {"runtime": "torch", "model": self.what, "torch": torch.__version__}


class SessionDenoiser(Denoiser):
    """A fine_deploy.runtime Session (ONNX Runtime, TensorRT, Core ML) of an exported backbone.

    A model with a fixed batch size is run in chunks of that size, the last chunk padded with copies of
    its first image (their outputs are dropped), so any number of images can be sampled from it.
    """

    def __init__(self, session: Any, info: ModelInfo) -> None:
        self.session = session
        self.info = info
        self.runtime = session.backend
        self._x, self._t = session.inputs[0].name, "timestep"
        self._dtypes = {s.name: np.dtype(s.dtype) for s in session.inputs}
        dim0 = session.inputs[0].shape[0]
        self.fixed_batch = int(dim0) if isinstance(dim0, int) and dim0 > 0 else None
        self._out = session.outputs[0].name
        d = session.describe()  # taken now: a closed session cannot describe itself
        self._describe = {"runtime": self.runtime, "providers": d.get("providers"), "versions": d.get("versions"),
                          "model": d.get("model"), "fixed_batch": self.fixed_batch}

    def _feeds(self, x: torch.Tensor, t: float, cond: dict[str, torch.Tensor] | None) -> dict[str, np.ndarray]:
        feeds = {self._x: x.numpy().astype(self._dtypes[self._x]),
                 self._t: np.full((len(x),), t, dtype=self._dtypes[self._t])}
        for k, v in (cond or {}).items():
            if k in self._dtypes:
                feeds[k] = v.numpy().astype(self._dtypes[k])
        return feeds

    def _run(self, x: torch.Tensor, t: float, cond: dict[str, torch.Tensor] | None) -> torch.Tensor:
        fb = self.fixed_batch
        if fb is None:
            return torch.from_numpy(np.asarray(self.session.run(self._feeds(x, t, cond))[self._out], np.float32))
        out = []
        for i in range(0, len(x), fb):
            xs, cs = x[i:i + fb], _chunk(cond, slice(i, i + fb))
            k = len(xs)
            if k < fb:  # pad with copies of the first image; their outputs are dropped
                xs = torch.cat([xs, xs[:1].expand(fb - k, *xs.shape[1:])])
                cs = None if cs is None else {n: torch.cat([v, v[:1].expand(fb - k, *v.shape[1:])])
                                              for n, v in cs.items()}
            y = np.asarray(self.session.run(self._feeds(xs, t, cs))[self._out], np.float32)
            out.append(torch.from_numpy(y[:k]))
        return torch.cat(out)

    def describe(self) -> dict[str, Any]:
        return dict(self._describe)

    def close(self) -> None:
        self.session.close()
