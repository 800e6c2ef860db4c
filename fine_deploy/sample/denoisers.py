"""One call, `eps = denoiser(x, t, labels)`, over a PyTorch module or a runtime Session.

The sampling loop (and the diffusers scheduler inside it) works on torch tensors whatever ran the
network, so two backends given the same seed see exactly the same noise and differ only by what their
networks return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

CHUNK = 64  # images per network call: bounds activation memory for large batches


@dataclass
class ModelInfo:
    """What the sampler needs to know about a backbone: image shape and classes."""

    backbone: str
    channels: int
    resolution: int
    num_classes: int | None  # class-conditional DiT: labels 0..n-1, and n is the null (unconditional) class

    @property
    def class_conditional(self) -> bool:
        return bool(self.num_classes)

    @classmethod
    def from_config(cls, backbone: str, config: dict[str, Any], resolution: int | None = None) -> ModelInfo:
        n = config.get("num_embeds_ada_norm") if backbone == "DiTTransformer2DModel" else None
        return cls(backbone, int(config["in_channels"]), int(resolution or config["sample_size"]),
                   int(n) if n else None)


class Denoiser:
    """ε-prediction of a backbone at timestep `t` for a batch of images (and class labels)."""

    info: ModelInfo
    runtime: str  # "torch", "onnxruntime-cpu", "tensorrt", ...

    def __call__(self, x: torch.Tensor, t: int, labels: torch.Tensor | None) -> torch.Tensor:
        out = [self._run(x[i:i + CHUNK], t, None if labels is None else labels[i:i + CHUNK])
               for i in range(0, len(x), CHUNK)]
        eps = torch.cat(out).float()
        c = self.info.channels
        # learned-variance models (out_channels = 2·in) return [ε, variance]; samplers here use ε
        return eps[:, :c] if eps.shape[1] == 2 * c else eps

    def _run(self, x: torch.Tensor, t: int, labels: torch.Tensor | None) -> torch.Tensor:
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

    @torch.no_grad()
    def _run(self, x: torch.Tensor, t: int, labels: torch.Tensor | None) -> torch.Tensor:
        tt = torch.full((len(x),), int(t), dtype=torch.long)
        if labels is not None:
            return self.model(x, timestep=tt, class_labels=labels.long(), return_dict=False)[0]
        return self.model(x, tt, return_dict=False)[0]

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
        specs = {s.name: s for s in session.inputs}
        self._x, self._t = session.inputs[0].name, "timestep"
        self._labels = "class_labels" if "class_labels" in specs else None
        self._dtypes = {s.name: np.dtype(s.dtype) for s in session.inputs}
        dim0 = session.inputs[0].shape[0]
        self.fixed_batch = int(dim0) if isinstance(dim0, int) and dim0 > 0 else None
        self._out = session.outputs[0].name
        d = session.describe()  # taken now: a closed session cannot describe itself
        self._describe = {"runtime": self.runtime, "providers": d.get("providers"), "versions": d.get("versions"),
                          "model": d.get("model"), "fixed_batch": self.fixed_batch}

    def _feeds(self, x: torch.Tensor, t: int, labels: torch.Tensor | None) -> dict[str, np.ndarray]:
        b = len(x)
        feeds = {self._x: x.numpy().astype(self._dtypes[self._x]),
                 self._t: np.full((b,), t, dtype=self._dtypes[self._t])}
        if self._labels is not None:
            lab = labels if labels is not None else torch.zeros(b, dtype=torch.long)
            feeds[self._labels] = lab.numpy().astype(self._dtypes[self._labels])
        return feeds

    def _run(self, x: torch.Tensor, t: int, labels: torch.Tensor | None) -> torch.Tensor:
        fb = self.fixed_batch
        if fb is None:
            return torch.from_numpy(np.asarray(self.session.run(self._feeds(x, t, labels))[self._out], np.float32))
        out = []
        for i in range(0, len(x), fb):
            xs = x[i:i + fb]
            ls = None if labels is None else labels[i:i + fb]
            k = len(xs)
            if k < fb:
                xs = torch.cat([xs, xs[:1].expand(fb - k, *xs.shape[1:])])
                ls = None if ls is None else torch.cat([ls, ls[:1].expand(fb - k)])
            y = np.asarray(self.session.run(self._feeds(xs, t, ls))[self._out], np.float32)
            out.append(torch.from_numpy(y[:k]))
        return torch.cat(out)

    def describe(self) -> dict[str, Any]:
        return dict(self._describe)

    def close(self) -> None:
        self.session.close()
