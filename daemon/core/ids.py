"""Random identifiers: generated room slugs, invite tokens and knock request ids."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

RandomBytes = Callable[[int], bytes]

ROOM_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""What a room id (slug) must match in full."""

GENERATED_ROOM_ID_LENGTH = 8
_SLUG_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"

INVITE_TOKEN_BYTES = 16
"""16 random bytes give a 22-character urlsafe token."""

REQUEST_ID_BYTES = 9
"""9 random bytes give a 12-character urlsafe knock request id."""


def random_token(random_bytes: RandomBytes, size: int) -> str:
    """``size`` random bytes as unpadded urlsafe base64, never starting with ``-``.

    A leading ``-`` would read as an option to command-line tools (``salon join --invite``,
    ``salonctl revoke``); redrawing those (1 in 64) costs less than a bit of entropy.
    """
    while True:
        token = base64.urlsafe_b64encode(random_bytes(size)).rstrip(b"=").decode("ascii")
        if not token.startswith("-"):
            return token


def random_room_id(random_bytes: RandomBytes) -> str:
    """Eight random lowercase letters and digits."""
    chars: list[str] = []
    while len(chars) < GENERATED_ROOM_ID_LENGTH:
        for byte in random_bytes(GENERATED_ROOM_ID_LENGTH):
            # 252 is the largest multiple of 36 below 256: rejecting the rest keeps it uniform.
            if byte < 252 and len(chars) < GENERATED_ROOM_ID_LENGTH:
                chars.append(_SLUG_ALPHABET[byte % 36])
    return "".join(chars)
