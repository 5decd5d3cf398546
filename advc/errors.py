"""The one error type a user ever sees from advc, outside of spec diagnostics.

Anything the user can fix (a missing data folder, an unknown model, a bad option) is raised
as ``UserError``; the CLI prints it as one line -- ``error: <what> (<where>) -- hint: <how to fix>``
-- and exits non-zero. Spec problems have their own richer type, ``SpecError`` in
``advc.compiler.diagnostics``, which subclasses this one.
"""

from __future__ import annotations


class AdvcError(Exception):
    """Base class of every error advc reports to a user instead of a traceback."""

    exit_code = 1

    def render(self) -> str:  # pragma: no cover - overridden
        return f"error: {self}"


class UserError(AdvcError):
    """A problem the user can fix, reported on one line."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.where:
            text += f" ({self.where})"
        if self.hint:
            text += f" -- hint: {self.hint}"
        return text
