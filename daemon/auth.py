"""Built-in authentication: static operator tokens and stable guest identities.

A guest keeps a random ``guest_key`` on its device; its user id is derived from that key, so the
same guest is recognised when it reconnects (and keeps being a room's owner) without accounts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

from salon.daemon.config import GUEST_PREFIX
from salon.daemon.core import Identity
from salon.daemon.wire.text import cell_width, clean_text

MAX_DISPLAY_NAME = 64
GUEST_KEY_BYTES = (16, 64)
"""Valid lengths of a decoded guest key (PROTOCOL.md section 5); clients make 32 random bytes."""


class AuthError(Exception):
    """Credentials were refused; the message is safe to send to the client (no secrets)."""


def guest_user_id(guest_key: bytes) -> str:
    """The stable user id of a guest: ``guest-`` + 12 hex digits of SHA-256(all key bytes)."""
    return GUEST_PREFIX + hashlib.sha256(guest_key).hexdigest()[:12]


def clean_display_name(name: str) -> str:
    """A display name under the text rule (a plugin's answer is cleaned, never trusted)."""
    name = clean_text(name) if isinstance(name, str) else ""
    if not 1 <= cell_width(name) <= MAX_DISPLAY_NAME:
        raise AuthError(f"display_name must be 1..{MAX_DISPLAY_NAME} characters")
    return name


class BuiltinAuthenticator:
    """Tokens from ``[auth.tokens]`` and, when allowed, guests identified by their key."""

    def __init__(self, tokens: Mapping[str, str], allow_guests: bool) -> None:
        self._tokens = dict(tokens)
        self._allow_guests = allow_guests

    async def authenticate(
        self, credentials: Mapping[str, str], display_name: str, address: str = ""
    ) -> Identity:
        name = clean_display_name(display_name)
        token = credentials.get("token")
        if token is not None:
            for known, user in self._tokens.items():
                # Constant-time comparison: a token check must not leak prefixes by timing.
                if hmac.compare_digest(known.encode(), token.encode()):
                    return Identity(user=user, display_name=name, verified={"token": user})
            raise AuthError("unknown token")
        guest_key = credentials.get("guest_key")
        if guest_key is not None:
            if not self._allow_guests:
                raise AuthError("this server does not admit guests")
            try:
                raw = base64.b64decode(guest_key, validate=True)
            except (binascii.Error, ValueError):
                raise AuthError("guest_key is not base64") from None
            shortest, longest = GUEST_KEY_BYTES
            if not shortest <= len(raw) <= longest:
                raise AuthError(f"guest_key must decode to {shortest}..{longest} random bytes")
            return Identity(user=guest_user_id(raw), display_name=name)
        raise AuthError("no credentials: send a token or a guest_key")
