"""Errors a user sees: each carries what went wrong in words that name the place."""

from __future__ import annotations

from typing import Any


class AnnunciatorError(Exception):
    """Base for errors reported to a person rather than as a traceback."""


class ConfigError(AnnunciatorError):
    """An invalid configuration: every problem found, each with the file, key path and line."""

    def __init__(self, problems: list[tuple[str, str]], file: str = "", lines: Any = None):
        self.problems = problems
        self.file = file
        self.lines = lines or {}
        super().__init__(self.render())

    def render(self) -> str:
        out = []
        for path, message in self.problems:
            where = self.file
            line = self.lines.get(path) if path else None
            if line:
                where = f"{where}:{line}" if where else f"line {line}"
            prefix = f"{where}: " if where else ""
            out.append(f"{prefix}{path}: {message}" if path else f"{prefix}{message}")
        return "\n".join(out)


class NotFound(AnnunciatorError):
    """The thing asked for does not exist (HTTP 404)."""


class Conflict(AnnunciatorError):
    """The request contradicts the current state, e.g. acknowledging twice (HTTP 409)."""


class Invalid(AnnunciatorError):
    """The request is well-formed but not acceptable, e.g. missing required ack notes (HTTP 422)."""


class AlreadyRunning(AnnunciatorError):
    """Another gateway holds the database: a second one would send every notification twice."""


class Unavailable(AnnunciatorError):
    """The database does not answer in time (HTTP 503): nothing was lost, ask again later."""


class Refused(AnnunciatorError):
    """The database refused rows of this change (HTTP 500): they are not stored, and nothing acts
    as if they were; the other changes committed beside them are stored."""
