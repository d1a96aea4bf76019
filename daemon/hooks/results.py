"""What hook implementations return besides plain values: a refusal, an approval, a level."""

from __future__ import annotations

from dataclasses import dataclass

from salon.daemon.wire.messages import ErrorCode


@dataclass(frozen=True)
class Deny:
    """Refuse what the hook was asked about; ``reason`` is sent to the client.

    ``code`` is the error code of the reply: by default ``auth_failed`` for
    :func:`authenticate` and ``denied_by_plugin`` for every other hook. A plugin that limits
    rates uses ``rate_limited``.
    """

    reason: str
    code: ErrorCode | None = None


@dataclass(frozen=True)
class Approve:
    """From :func:`join_request`: admit a knocking requester without asking the hosts."""

    trust: tuple[str, ...] = ()
    """Annotations recorded with the decision (shown in logs; the hosts see none: no knock)."""


@dataclass(frozen=True)
class AudioLevel:
    """One stage member's audio level, as sampled for :func:`audio_levels`."""

    user: str
    """The member's user id."""
    level: int
    """Smoothed level in -dBov as RFC 6464 has it: 0 is the loudest, 127 silence."""
    speaking: bool
    """Whether the core counts the member as speaking now."""


@dataclass(frozen=True)
class Failure:
    """An implementation raised or ran out of time; callers apply the hook's safe default."""

    plugin: str
    """The failing plugin."""
    error: str
    """What went wrong, for logs."""
