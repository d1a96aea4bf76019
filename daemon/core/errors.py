"""The exception every refused core operation raises."""

from __future__ import annotations

from salon.daemon.wire.messages import ErrorCode


class CoreError(Exception):
    """A request was refused; nothing changed. ``code`` and ``message`` go to the client."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"CoreError({self.code.value!r}, {self.message!r})"
