"""The Session interface every runtime implements, and the feed/timing logic they share."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fine_deploy.errors import FineDeployError
from fine_deploy.runtime.spec import SessionOptions, TensorSpec


class Session:
    """One loaded model. Subclasses set the attributes below and implement ``run``."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    providers: list[str]
    backend: str
    options: SessionOptions
    model_path: Path
    # Shapes the artifact's manifest declares (what the exporter checked); ``make_feeds`` uses them.
    declared_shapes: dict[str, tuple[int, ...]]
    # [low, high) per integer input from the manifest (a DiT's class labels); others draw from [0, 1000)
    declared_ranges: dict[str, tuple[int, int]] = {}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def input_shapes(
        self, shapes: dict[str, tuple[int, ...]] | None = None, batch: int = 1
    ) -> dict[str, tuple[int, ...]]:
        """Concrete shape per input: ``shapes`` > manifest-declared > model shape with a dynamic
        leading dim set to ``batch``. Any other dynamic dim is an error naming ``--shape``."""
        shapes = dict(shapes or {})
        unknown = sorted(set(shapes) - {s.name for s in self.inputs})
        if unknown:
            names = ", ".join(s.name for s in self.inputs)
            raise FineDeployError(
                f"--shape names unknown input(s) {', '.join(unknown)} of {self.model_path.name}; "
                f"its inputs are: {names}"
            )
        out: dict[str, tuple[int, ...]] = {}
        for spec in self.inputs:
            if spec.name in shapes:
                shape = tuple(int(d) for d in shapes[spec.name])
                if len(shape) != len(spec.shape) or any(
                    isinstance(m, int) and m >= 0 and m != d for m, d in zip(spec.shape, shape, strict=False)
                ):
                    raise FineDeployError(
                        f"--shape {spec.name}={'x'.join(map(str, shape))} does not fit the model's "
                        f"{_fmt_shape(spec.shape)}; give one size per dim and keep the fixed ones"
                    )
                out[spec.name] = shape
                continue
            if spec.name in self.declared_shapes:
                out[spec.name] = tuple(self.declared_shapes[spec.name])
                continue
            shape = []
            for i, d in enumerate(spec.shape):
                if isinstance(d, int) and d >= 0:
                    shape.append(d)
                elif i == 0:
                    shape.append(batch)
                else:
                    raise FineDeployError(
                        f"input {spec.name} of {self.model_path.name} has dynamic shape "
                        f"{_fmt_shape(spec.shape)}; "
                        f"pass --shape {spec.name}=" + "x".join("N" for _ in spec.shape)
                    )
            out[spec.name] = tuple(shape)
        return out

    def make_feeds(
        self, shapes: dict[str, tuple[int, ...]] | None = None, batch: int = 1, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """Random inputs of the right shapes and dtypes (floats ~ N(0,1), ints in the manifest's declared
        range or else [0, 1000) like diffusion timesteps, bools false), reproducible from ``seed``."""
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        resolved = self.input_shapes(shapes, batch)
        for spec in self.inputs:
            shape = resolved[spec.name]
            try:
                dtype = np.dtype(spec.dtype)
            except TypeError:
                raise FineDeployError(
                    f"input {spec.name} has dtype {spec.dtype}, which numpy cannot make; "
                    "export the model with float16/float32 inputs"
                ) from None
            if dtype.kind == "f":
                feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind in "iu":
                lo, hi = self.declared_ranges.get(spec.name, (0, 1000))
                feeds[spec.name] = rng.integers(lo, hi, size=shape).astype(dtype)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=dtype)
        return feeds

    def time_runs(self, feeds: dict[str, np.ndarray], runs: int) -> np.ndarray:
        """Seconds per run, ``time.perf_counter`` around each ``run`` (results synchronised)."""
        times = np.empty(runs, dtype=np.float64)
        for i in range(runs):
            t0 = time.perf_counter()
            self.run(feeds)
            times[i] = time.perf_counter() - t0
        return times

    def versions(self) -> dict[str, str | None]:
        return {}

    def describe(self) -> dict[str, Any]:
        """Backend, providers that ran, versions and options: recorded with every measurement."""
        return {
            "backend": self.backend,
            "providers": list(self.providers),
            "versions": self.versions(),
            "options": self.options.to_dict(),
            "model": str(self.model_path),
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    def close(self) -> None:
        """Release runtime resources early (GPU memory); the session is unusable afterwards."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt_shape(shape: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
