"""Who a session is, as established by the authentication layer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Identity:
    """An authenticated user behind a session."""

    user: str
    """Stable user id from the auth layer (``"alice"``, ``"guest-3fa1c2..."``)."""
    display_name: str
    """Name shown to other members."""
    verified: dict[str, str] = field(default_factory=dict)
    """Attributes the auth layer vouches for (shown to hosts on knocks and in participants)."""
    operator: bool = False
    """Whether this identity may use the operator (admin) path."""
