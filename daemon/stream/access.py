"""Signed stream URLs: one playlist URL per listener, segment URLs every listener shares.

- The playlist URL carries ``t=<session>.<mac>``, an HMAC of (room, session, user) under a key
  salond draws at start. The origin accepts it only while that session is a member of the room
  as that user, so leaving, removal or a ban ends it on the next playlist fetch. It is never
  cached by a shared cache (``Cache-Control: no-cache``).
- Segment and init URLs carry ``s=<mac>``, an HMAC of (room, stream epoch, segment name): the
  same URL for every listener, so a cache fetches each segment once. A segment's signature
  first appears in a playlist that lists it; someone whose playlist access ended learns no
  later segment's URL.

Signatures are 128-bit HMAC-SHA256 prefixes in URL-safe base64 (22 characters), compared in
constant time. See docs/stream_mode.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

EPOCH_PATTERN = re.compile(r"^[0-9a-f]{16}$")
_MAC_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")
_TOKEN_PATTERN = re.compile(r"^([0-9]{1,12})\.([A-Za-z0-9_-]{22})$")


class StreamSigner:
    """Makes and checks the signatures of stream URLs."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(32)

    def _mac(self, *parts: str) -> str:
        message = "\x00".join(parts).encode("utf-8")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def playlist_token(self, room: str, session: int, user: str) -> str:
        """The ``t`` parameter of ``session``'s playlist URL."""
        return f"{session}.{self._mac('playlist', room, str(session), user)}"

    def token_session(self, token: str) -> int | None:
        """The session a well-formed token names (not yet verified), or None."""
        match = _TOKEN_PATTERN.match(token)
        return int(match.group(1)) if match else None

    def check_playlist_token(self, room: str, token: str, user: str) -> bool:
        """Whether ``token`` was made for this room, its session and ``user``."""
        match = _TOKEN_PATTERN.match(token)
        if match is None:
            return False
        expected = self._mac("playlist", room, match.group(1), user)
        return hmac.compare_digest(expected, match.group(2))

    def segment_signature(self, room: str, epoch: str, name: str) -> str:
        """The ``s`` parameter of a segment (``name`` is its sequence number or ``init``)."""
        return self._mac("segment", room, epoch, name)

    def check_segment(self, room: str, epoch: str, name: str, signature: str) -> bool:
        if not _MAC_PATTERN.match(signature):
            return False
        return hmac.compare_digest(self.segment_signature(room, epoch, name), signature)
