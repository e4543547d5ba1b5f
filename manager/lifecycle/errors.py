"""Exceptions that end a project run."""


class PhaseFailed(Exception):
    """A phase failed; ``reason`` is the concise, user-facing error kept on the project."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StopRequested(Exception):
    """The user asked to stop the project."""
