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


MAX_USER_ID_BYTES = 128
"""Longest user id (UTF-8 bytes) an authenticator may give: user ids appear in every
participant entry and media key, so the size of each server message stays bounded."""
MAX_VERIFIED = 8
"""Most verified attributes one identity may carry."""
MAX_VERIFIED_BYTES = 128
"""Longest key, and longest value, of a verified attribute (UTF-8 bytes)."""


def identity_problem(identity: Identity) -> str | None:
    """Why an authenticator's identity is out of bounds (see the constants above), or None."""
    user = identity.user
    if not user or len(user.encode()) > MAX_USER_ID_BYTES:
        return f"user id must be 1..{MAX_USER_ID_BYTES} bytes"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in user):
        return "user id holds a control character"
    if len(identity.verified) > MAX_VERIFIED:
        return f"at most {MAX_VERIFIED} verified attributes"
    for key, value in identity.verified.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return "verified attributes must be strings"
        if len(key.encode()) > MAX_VERIFIED_BYTES or len(value.encode()) > MAX_VERIFIED_BYTES:
            return f"a verified attribute's key and value are at most {MAX_VERIFIED_BYTES} bytes"
    return None
