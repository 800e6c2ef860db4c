"""The rich console every command prints its tables on."""

from __future__ import annotations

import sys

from rich.console import Console


def wide_console(stderr: bool = False, width: int = 140) -> Console:
    """A terminal keeps its width; piped output (CI logs, files) gets room for a whole table row
    instead of rich's 80-column default, so cells do not wrap into unreadable columns."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr) if stream.isatty() else Console(stderr=stderr, width=width)
