"""Checks of user input that run before anything heavy: output paths and image resolutions.

Every command checks its inputs first and refuses with one line (what is wrong, what is allowed,
exit 2) so that a mistake never costs minutes of work, a traceback or a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from fine_deploy.errors import FineDeployError


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


def check_probability(value: float, flag: str) -> float:
    """A significance level or fraction strictly between 0 and 1."""
    with contextlib.suppress(TypeError, ValueError):
        v = float(value)
        if 0.0 < v < 1.0:
            return v
    raise FineDeployError(f"{flag} {value} must lie strictly between 0 and 1, e.g. {flag} 0.05")
