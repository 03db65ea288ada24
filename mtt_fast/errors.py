"""User-facing errors.

Every mistake a user can make (bad path, corrupt image, wrong CSV, mismatched store, NaN)
raises :class:`UserError` with ONE line that names the file or the option. The CLI prints
that line and exits with status 2; the library never prints it itself.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or options, reported as one clear line."""

    def __init__(self, message: str) -> None:
        # Keep it to one line: the CLI prints str(self) as the whole error.
        super().__init__(" ".join(str(message).split()))
