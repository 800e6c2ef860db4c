"""Where fine-deploy reads shipped data and writes measured data.

Shipped, read-only: the device profiles are package data (``fine_deploy/profiles/*.yaml``; the
repository's top-level ``profiles/`` is a link to them), found with ``importlib.resources`` so that an
editable install and an installed wheel read the same files.

Written: measured LUTs, the host probe and the planner's caches go to the user cache
(``$FINE_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/fine-deploy``, else ``~/.cache/fine-deploy``) or to
an explicit ``-o``; never into the install or the source tree.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def cache_dir() -> Path:
    """$FINE_DEPLOY_CACHE, else $XDG_CACHE_HOME/fine-deploy, else ~/.cache/fine-deploy."""
    env = os.environ.get("FINE_DEPLOY_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fine-deploy"


def measured_dir() -> Path:
    """Measured LUTs (`<device>-<runtime>.json`) and the host probe live here."""
    return cache_dir() / "measured"


def measured_lut_path(device: str, runtime: str) -> Path:
    """The default LUT file of one device and runtime (written by `profile`, read by `plan`)."""
    return measured_dir() / f"{device}-{runtime}.json"


def shipped_profiles() -> Path:
    """The device YAMLs shipped in the package."""
    return Path(str(resources.files("fine_deploy") / "profiles"))
