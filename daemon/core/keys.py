"""Media flows and their SRTP keys: flow ids, SSRCs and AEAD_AES_128_GCM key material."""

from __future__ import annotations

import base64
from collections.abc import Callable

from salon.daemon.wire.messages import MediaKey, RedFlowKey

SRTP_PROFILE = "AEAD_AES_128_GCM"
MASTER_KEY_LENGTH = 16
MASTER_SALT_LENGTH = 12
KEY_MATERIAL_LENGTH = MASTER_KEY_LENGTH + MASTER_SALT_LENGTH
ROTATION_GRACE = 2.0
"""Seconds a flow rotated at a sequence number wrap is still forwarded if its speaker does not
switch to the new flow sooner (PROTOCOL.md 11.8): packets already in flight are not lost."""


class FlowIdAllocator:
    """Hands out flow ids, never reusing one while the server runs.

    Ids start at 1 and grow by one, so the busiest flows of a young server fit a one-byte varint.
    """

    def __init__(self) -> None:
        self._next = 1

    def allocate(self) -> int:
        flow_id = self._next
        self._next += 1
        return flow_id


def new_ssrc(random_bytes: Callable[[int], bytes], taken: set[int]) -> int:
    """A random 32-bit SSRC not in ``taken``."""
    while True:
        ssrc = int.from_bytes(random_bytes(4), "big")
        if ssrc not in taken:
            return ssrc


def new_key_material(random_bytes: Callable[[int], bytes]) -> bytes:
    """A fresh SRTP master key followed by its master salt (28 bytes)."""
    material = random_bytes(KEY_MATERIAL_LENGTH)
    if len(material) != KEY_MATERIAL_LENGTH:
        raise ValueError(f"random source returned {len(material)} bytes, not 28")
    return material


def media_key(user: str, flow_id: int, ssrc: int, material: bytes, epoch: int) -> MediaKey:
    """The wire description of a speaker's flow: ``key`` is standard base64 of key || salt."""
    return MediaKey(
        user=user,
        flow_id=flow_id,
        ssrc=ssrc,
        profile=SRTP_PROFILE,
        key=base64.b64encode(material).decode("ascii"),
        epoch=epoch,
    )


def red_flow_key(flow_id: int, ssrc: int, material: bytes) -> RedFlowKey:
    """The wire description of a speaker's redundancy flow (same key encoding as the flow's)."""
    return RedFlowKey(flow_id=flow_id, ssrc=ssrc, key=base64.b64encode(material).decode("ascii"))
