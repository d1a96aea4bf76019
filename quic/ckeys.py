"""The C extension's AES keys for one direction of an aioquic 1-RTT crypto context.

The keys are derived again from the context's secret, as aioquic derived them. A key update
keeps the first header protection key, so a sealer or opener is kept only once it gave
aioquic's own bytes on one packet. Used by the fast path (sealing media), the ACK path
(opening listeners' ACKs) and the bench's listener fleet.
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.crypto import CryptoContext, CryptoError, derive_key_iv_hp
from aioquic.quic.packet import PACKET_FIXED_BIT
from aioquic.tls import CipherSuite

AES_SUITES = (CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384)
"""The suites the C extension seals and opens."""

_PN_OFFSET = 9
"""Where the check packet's packet number starts: a first byte and an 8-byte connection id."""
_PACKET_NUMBER = 7


def _check_packet(speedups: Any, context: CryptoContext) -> tuple[Any, bytes, bytes] | None:
    """The derived keys, a short header (2-byte packet number) and a payload, or None when the
    extension is off or the suite is not one it does."""
    suite, secret, version = context.cipher_suite, context.secret, context.version
    if speedups is None or suite not in AES_SUITES or secret is None or version is None:
        return None
    keys = derive_key_iv_hp(cipher_suite=suite, secret=secret, version=version)
    first = PACKET_FIXED_BIT | (context.key_phase << 2) | 1
    header = bytes((first,)) + bytes(_PN_OFFSET - 1) + _PACKET_NUMBER.to_bytes(2, "big")
    return keys, header, bytes(24)


def checked_sealer(speedups: Any, context: CryptoContext) -> Any:
    """A ``PacketSealer`` for ``context`` (aioquic's send side), or None: the extension is
    off, the suite is not AES, or it did not give ``encrypt_packet``'s bytes."""
    found = _check_packet(speedups, context)
    if found is None:
        return None
    keys, header, payload = found
    sealer = speedups.PacketSealer(*keys)
    sealed = sealer.protect(header, payload, _PACKET_NUMBER)
    if sealed != context.encrypt_packet(header, payload, _PACKET_NUMBER):
        return None
    return sealer


def checked_opener(speedups: Any, context: CryptoContext) -> Any:
    """A ``PacketOpener`` for ``context`` (aioquic's receive side), or None: the extension is
    off, the suite is not AES, or it did not open a packet as ``decrypt_packet`` does."""
    found = _check_packet(speedups, context)
    if found is None:
        return None
    keys, header, payload = found
    packet = speedups.PacketSealer(*keys).protect(header, payload, _PACKET_NUMBER)
    try:
        plain_header, plain, number, _ = context.decrypt_packet(packet, _PN_OFFSET, _PACKET_NUMBER)
    except CryptoError:
        return None
    opener = speedups.PacketOpener(*keys)
    if opener.open(packet, _PN_OFFSET, _PACKET_NUMBER, context.key_phase) != (
        plain_header[0],
        plain,
        number,
    ):
        return None
    return opener
