"""The precisions a plan may give a layer, as data: their names and the bits a weight takes in each.

One vocabulary for the device profiles (which precisions a runtime runs), plan.json (`"precision"`),
and the exporters (which formats can write which). It sits in `cost` because the profiles, the lowest
reader of it, live here; the planner and the exporter import it from here.

- fp32 / fp16 / bf16: weights and compute in that float format.
- int8: 8-bit integer weights (per-channel scales); activations int8 too where calibrated (static QDQ),
  or quantised on the fly (dynamic).
- fp8: E4M3 weights and activations (Hopper and later, TensorRT).
- pal8 / pal6 / pal4: Core ML palettised weights, a 2^n-entry look-up table per tensor (k-means), with
  fp16 compute; what Apple's ml-stable-diffusion ships for SDXL on iPhone.
"""

from __future__ import annotations

from fine_deploy.errors import FineDeployError

# bits one stored weight takes (a palette's own table and an int8 tensor's scales are not counted)
WEIGHT_BITS: dict[str, int] = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "pal8": 8, "pal6": 6,
                               "pal4": 4}
PRECISIONS: tuple[str, ...] = tuple(WEIGHT_BITS)
DEFAULT = "fp32"  # what a plan without a `precision` field means
PALETTES = {p: WEIGHT_BITS[p] for p in ("pal8", "pal6", "pal4")}  # precision -> nbits of the look-up table index
# the arithmetic a precision runs in where that differs from its storage (a palette is expanded to fp16)
COMPUTE = {**{p: "fp16" for p in PALETTES}}


def compute_dtype(precision: str) -> str:
    """The dtype whose peak rate prices a layer stored at `precision`."""
    return COMPUTE.get(precision, precision)


def check_precision(name: object, where: str) -> str:
    """`name` when it is a known precision, else one line naming the known ones."""
    if not isinstance(name, str) or name not in WEIGHT_BITS:
        raise FineDeployError(f"{where}: precision {name!r} is unknown; use one of {', '.join(PRECISIONS)}")
    return name


def weight_bytes(elements: int, precision: str) -> float:
    """Bytes `elements` weights take at `precision` (what the memory model prices)."""
    return elements * WEIGHT_BITS[check_precision(precision, "weight_bytes")] / 8
