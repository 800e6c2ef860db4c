"""One exception type for every user-facing failure.

The CLI turns it into a single line on stderr and a non-zero exit; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class FineDeployError(Exception):
    """A problem with the user's input: the message names the problem and the fix, on one line."""

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(" ".join(message.split()))
        if exit_code is not None:
            self.exit_code = exit_code
