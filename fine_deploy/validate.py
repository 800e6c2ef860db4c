"""Checks of user input that run before anything heavy: output paths and image resolutions.

Every command checks its inputs first and refuses with one line (what is wrong, what is allowed,
exit 2) so that a mistake never costs minutes of work, a traceback or a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from fine_deploy.errors import FineDeployError

# an image side beyond this many times the supernet's own is refused: attention cost grows with its 4th power
MAX_RESOLUTION_FACTOR = 4


def _writable_dir(directory: Path, flag: str, target: Path) -> None:
    """The nearest existing ancestor of `directory` is a folder this process can create files in."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise FineDeployError(f"{flag} {target}: {probe} is a file, not a folder; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FineDeployError(f"{flag} {target}: cannot write in {probe} (permission denied); choose a writable path")
    try:  # os.access says yes to root on read-only mounts and /proc: try it for real (nothing is left behind)
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise FineDeployError(
            f"{flag} {target}: cannot write in {probe} ({e.strerror or e}); choose a writable path"
        ) from None


def output_file(path: str | os.PathLike | None, flag: str = "-o", example: str = "out.json") -> Path | None:
    """Refuse, before any work, an output file path that is a directory or cannot be written."""
    if path is None:
        return None
    path = Path(path)
    if str(path) in ("", "."):
        raise FineDeployError(f"{flag} needs a file path, e.g. {flag} {example}")
    if path.is_dir():
        raise FineDeployError(
            f"{flag} {path} is an existing directory; give a file path, e.g. {flag} {path / example}"
        )
    _writable_dir(path.parent, flag, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise FineDeployError(f"{flag} {path} exists and is read-only; choose another path")
    return path


def output_dir(path: str | os.PathLike | None, flag: str = "-o") -> Path | None:
    """Refuse, before any work, an output directory path that is a file or cannot be written."""
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FineDeployError(f"{flag} {path} is an existing file; give a directory path")
    _writable_dir(path.parent if not path.exists() else path, flag, path)
    return path


def resolution_options(backbone: str, config: dict[str, Any]) -> tuple[list[int] | None, str, int, int]:
    """(exact options or None, description, step, largest) of the image sides a supernet runs at."""
    native = int(config["sample_size"])
    if backbone == "DiTTransformer2DModel":  # the positional embedding is built for sample_size
        return [native], f"{native} only (this DiT's positional embedding is built for it)", native, native
    step = 2 ** (len(config["block_out_channels"]) - 1)
    top = max(native, step) * MAX_RESOLUTION_FACTOR
    top -= top % step
    return None, f"a multiple of {step} from {step} to {top}", step, top


def check_resolution(backbone: str, config: dict[str, Any], resolution: int | None, flag: str = "--resolution") -> int:
    """The image side to use: `resolution` when the supernet runs at it, else one line with what is allowed."""
    native = int(config["sample_size"])
    if resolution is None:
        return native
    exact, allowed, step, top = resolution_options(backbone, config)
    ok = (
        isinstance(resolution, int)
        and not isinstance(resolution, bool)
        and (resolution in exact if exact is not None else (step <= resolution <= top and resolution % step == 0))
    )
    if not ok:
        raise FineDeployError(f"{flag} {resolution} is not allowed for this supernet; use {allowed}")
    return int(resolution)


def check_probability(value: float, flag: str) -> float:
    """A significance level or fraction strictly between 0 and 1."""
    with contextlib.suppress(TypeError, ValueError):
        v = float(value)
        if 0.0 < v < 1.0:
            return v
    raise FineDeployError(f"{flag} {value} must lie strictly between 0 and 1, e.g. {flag} 0.05")
