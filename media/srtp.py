"""SRTP protection of one speaker's packets and unprotection of every speaker's packets.

Salon uses the AEAD_AES_128_GCM profile (RFC 7714): a 16-byte master key followed by a 12-byte
master salt, given to room members as standard base64 of the 28 bytes. Each speaker has its own
key and SSRC, so the receiver keeps one libsrtp session per media flow.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import pylibsrtp

from salon.daemon.wire.datagram import unpack_datagram
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.rtp import RtpPacket

SRTP_PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM
PROFILE_NAME = "AEAD_AES_128_GCM"
MASTER_KEY_LENGTH = 16
MASTER_SALT_LENGTH = 12
KEY_LENGTH = MASTER_KEY_LENGTH + MASTER_SALT_LENGTH  # 28 bytes: key || salt
AUTH_TAG_LENGTH = 16  # GCM tag appended to every protected packet


class SrtpError(ValueError):
    """A key is malformed, or a packet cannot be protected or unprotected.

    ``reason`` is a short machine-readable word (``"unknown_flow"``, ``"auth_failed"``,
    ``"replay"``, ``"wrong_ssrc"``, ``"malformed"``, ``"bad_key"``) suitable for drop counters.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def key_from_base64(text: str) -> bytes:
    """Decode a ``MediaKey.key`` (base64 of key || salt) into its 28 bytes."""
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise SrtpError("bad_key", f"SRTP key is not valid base64: {exc}") from None
    if len(key) != KEY_LENGTH:
        raise SrtpError(
            "bad_key", f"SRTP key has {len(key)} bytes, {PROFILE_NAME} needs {KEY_LENGTH}"
        )
    return key


def key_to_base64(key: bytes) -> str:
    """Encode 28 bytes of key || salt the way ``MediaKey.key`` carries them."""
    _check_key(key)
    return base64.b64encode(key).decode("ascii")


def _check_key(key: bytes) -> None:
    if len(key) != KEY_LENGTH:
        raise SrtpError(
            "bad_key", f"SRTP key has {len(key)} bytes, {PROFILE_NAME} needs {KEY_LENGTH}"
        )


def _reason(exc: pylibsrtp.Error) -> str:
    # libsrtp's error strings, as pylibsrtp passes them on.
    text = str(exc)
    if "authentication" in text:
        return "auth_failed"
    if "replay" in text:
        return "replay"
    if "no appropriate context" in text:
        return "wrong_ssrc"
    return "malformed"


class SrtpSender:
    """Protects the RTP packets of one outgoing stream."""

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        policy = pylibsrtp.Policy(
            key=bytes(key),
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=SRTP_PROFILE,
        )
        self._session = pylibsrtp.Session(policy)

    def protect(self, rtp: bytes) -> bytes:
        """Encrypt and authenticate one serialized RTP packet."""
        try:
            return bytes(self._session.protect(rtp))
        except pylibsrtp.Error as exc:
            raise SrtpError("malformed", f"cannot protect RTP packet: {exc}") from None


@dataclass
class _Flow:
    ssrc: int
    session: pylibsrtp.Session


class SrtpReceiver:
    """Unprotects the packets of many speakers, each known by its media flow id.

    A flow is bound to one SSRC: a packet with another SSRC fails, as does a replayed or
    tampered one.
    """

    def __init__(self) -> None:
        self._flows: dict[int, _Flow] = {}

    def add(self, flow_id: int, ssrc: int, key: bytes) -> None:
        """Accept packets on ``flow_id`` from ``ssrc`` protected with ``key`` (replaces a flow)."""
        _check_key(key)
        policy = pylibsrtp.Policy(
            key=bytes(key),
            ssrc_type=pylibsrtp.Policy.SSRC_SPECIFIC,
            ssrc_value=ssrc,
            srtp_profile=SRTP_PROFILE,
        )
        self._flows[flow_id] = _Flow(ssrc, pylibsrtp.Session(policy))

    def remove(self, flow_id: int) -> None:
        """Forget a flow; unknown ids are ignored."""
        self._flows.pop(flow_id, None)

    def __contains__(self, flow_id: object) -> bool:
        return flow_id in self._flows

    def __len__(self) -> int:
        return len(self._flows)

    def open(self, datagram: bytes) -> tuple[int, RtpPacket]:
        """Unpack one media datagram (``flow_id || SRTP``), check and decrypt it: its flow id
        and clear RTP packet. Raises :class:`SrtpError` whose ``reason`` is the drop reason to
        count: ``malformed``, ``unknown_flow``, ``ssrc_mismatch`` or an SRTP rejection."""
        try:
            flow_id, srtp = unpack_datagram(datagram)
            packet = RtpPacket.parse(self.unprotect(flow_id, srtp))
        except WireError as exc:
            raise SrtpError("malformed", f"bad media datagram: {exc}") from None
        if packet.ssrc != self._flows[flow_id].ssrc:
            raise SrtpError("ssrc_mismatch", f"SSRC {packet.ssrc} is not flow {flow_id}'s")
        return flow_id, packet

    def unprotect(self, flow_id: int, data: bytes) -> bytes:
        """Check and decrypt one SRTP packet of ``flow_id``; raise :class:`SrtpError` if bad."""
        flow = self._flows.get(flow_id)
        if flow is None:
            raise SrtpError("unknown_flow", f"no SRTP key for media flow {flow_id}")
        try:
            return bytes(flow.session.unprotect(data))
        except pylibsrtp.Error as exc:
            reason = _reason(exc)
            raise SrtpError(reason, f"SRTP packet on flow {flow_id} rejected: {exc}") from None
