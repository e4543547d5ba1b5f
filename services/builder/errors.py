"""The one error type every builder step raises: a one-line, user-facing reason."""

from __future__ import annotations

from flops_utils.message_text import one_line

_MAX_DETAIL = 400


class BuildError(RuntimeError):
    """A build step failed; ``str(error)`` is one line the user can act on."""

    def __init__(self, reason: str, step: str = "") -> None:
        super().__init__(one_line(reason, _MAX_DETAIL))
        self.step = step
