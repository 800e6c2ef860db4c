"""Budgets with units: `4GB`, `3.5GiB`, `512MB`, `20ms`, `2s` -> bytes / seconds, and back for display.

Decimal prefixes (kB, MB, GB, TB) are powers of 1000 and binary ones (KiB, MiB, GiB, TiB) powers of
1024, as in IEC 80000-13 and the device data sheets. A memory budget typed as text needs its unit (`4`
alone is refused: 4 bytes is never what was meant); a Python int is bytes. A bare latency is seconds.
"""

from __future__ import annotations

import math
import re

from fine_deploy.errors import FineDeployError

_BYTES = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
}
_SECONDS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]*)\s*$")


def _split(text: str, what: str, example: str) -> tuple[float, str]:
    m = _NUMBER.match(str(text))
    if not m:
        raise FineDeployError(f"{what} {text!r} is not a number with a unit; write it like {example}")
    value = float(m.group(1))
    if not math.isfinite(value) or value <= 0:
        raise FineDeployError(f"{what} {text!r} must be positive; write it like {example}")
    return value, m.group(2)


def parse_bytes(text: str | int | float) -> int:
    """'4GB' -> 4_000_000_000, '3.5GiB' -> 3_758_096_384, '512MB', '1024' (bytes)."""
    value, unit = _split(str(text), "memory budget", "4GB, 3.5GiB or 512MB")
    if not unit and isinstance(text, str):
        n = text.strip()
        raise FineDeployError(f"memory budget {text!r} has no unit; give a unit, e.g. {n}GB or {n}GiB")
    scale = _BYTES.get(unit.lower())
    if scale is None:
        raise FineDeployError(
            f"memory budget {text!r} has unknown unit {unit!r}; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
        )
    return int(round(value * scale))


def parse_seconds(text: str | int | float) -> float:
    """'20ms' -> 0.02, '2s' -> 2.0, '150us', '0.5' (seconds)."""
    value, unit = _split(str(text), "latency budget", "20ms or 2s")
    scale = _SECONDS.get(unit if unit == "µs" else unit.lower())
    if scale is None:
        raise FineDeployError(f"latency budget {text!r} has unknown unit {unit!r}; use ns, us, ms, s or min")
    return value * scale


def format_bytes(n: float) -> str:
    """Binary units, as the runtimes report memory: 3.20 GiB, 12.5 MiB, 800 B."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def format_seconds(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def round_up_bytes(n: float) -> str:
    """A budget the user can type that is at least n bytes: the smallest '1.23MiB'-style value >= n."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{math.ceil(n / scale * 100) / 100:g}{unit}"
    return f"{math.ceil(n)}B"


def round_up_seconds(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{math.ceil(s / scale * 100) / 100:g}{unit}"
    return f"{math.ceil(s / 1e-9)}ns"
