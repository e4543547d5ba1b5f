"""The one error type every builder step raises: a one-line, user-facing reason."""

from __future__ import annotations

_MAX_DETAIL = 400


def one_line(text: str, limit: int = _MAX_DETAIL) -> str:
    """``text`` squeezed onto one line and cut to ``limit`` characters."""
    squeezed = " ".join(text.split())
    return squeezed if len(squeezed) <= limit else squeezed[: limit - 3] + "..."


class BuildError(RuntimeError):
    """A build step failed; ``str(error)`` is one line the user can act on."""

    def __init__(self, reason: str, step: str = "") -> None:
        super().__init__(one_line(reason))
        self.step = step
