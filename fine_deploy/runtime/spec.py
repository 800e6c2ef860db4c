"""Plain data shared by every runtime: tensor specs, session options, dtype names."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``dtype`` is a numpy dtype name; ``str`` dims are dynamic."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class SessionOptions:
    """How a session runs.

    ``threads`` is ONNX Runtime's intra-op thread count (None: the runtime's default, one per
    physical core). ``spinning`` defaults to off: with busy-waiting worker threads, two models
    benchmarked interleaved steal each other's cores and A/A comparisons of the same model showed
    22% false regressions on a 2-core runner; with spinning off they showed none.
    ``providers`` pins ONNX Runtime execution providers (None: chosen from the backend).
    """

    threads: int | None = None
    spinning: bool = False
    providers: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["providers"] = list(self.providers) if self.providers is not None else None
        return d


# ONNX Runtime type strings -> numpy dtype names. bfloat16 has no numpy dtype: kept as a name so that
# specs can describe it, but feeds cannot be made for it.
ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
