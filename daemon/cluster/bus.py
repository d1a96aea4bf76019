"""The authenticated message codec of the cluster bus (sans-I/O: bytes in, bytes out).

Every message between nodes is framed and signed with the cluster secret, so a node accepts
only messages from a node holding that secret, unaltered, and each at most once::

    b"SB1" | len(sender) u8 | sender | seq u64 | timestamp_ms u64 | kind u8 | body | HMAC-SHA256

The timestamp bounds how old (or how far in the future) a message may be; within that window
a per-sender record of sequence numbers refuses a message seen before. Everything refused is
counted by reason, never raised: bytes from the bus are as hostile as bytes from a client.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

MAGIC = b"SB1"
MAC_SIZE = hashlib.sha256().digest_size
MIN_SECRET = 32
"""Bytes a cluster secret must have at least (the HMAC-SHA256 key size)."""
MAX_SENDER = 64
_HEADER = struct.Struct("!QQB")  # seq, timestamp_ms, kind
SEQ_WINDOW = 1024
"""Sequence numbers remembered per sender below its highest: older ones are refused."""


class Kind(enum.IntEnum):
    """What a bus message carries."""

    MEDIA = 1
    """A speaker's SRTP datagram, relayed unchanged."""
    CONTROL = 2
    """A room control request or event (msgspec-encoded)."""
    MEDIA_BATCH = 3
    """Several SRTP datagrams of one room, relayed unchanged in one node-to-node datagram."""


class Refusal(enum.Enum):
    """Why a message was refused (the counter keys)."""

    MALFORMED = "malformed"
    BAD_MAC = "bad_mac"
    STALE = "stale"
    REPLAYED = "replayed"
    OWN = "own"


@dataclass(frozen=True, slots=True)
class BusMessage:
    sender: str
    seq: int
    timestamp_ms: int
    kind: Kind
    body: bytes


class _SeqWindow:
    """Sequence numbers seen from one sender: the highest, and a bitmap of the last ones."""

    __slots__ = ("highest", "seen")

    def __init__(self) -> None:
        self.highest = -1
        self.seen = 0  # bit i: highest - i was seen

    def accept(self, seq: int) -> bool:
        if seq > self.highest:
            shift = seq - self.highest
            self.seen = ((self.seen << shift) | 1) & ((1 << SEQ_WINDOW) - 1)
            self.highest = seq
            return True
        offset = self.highest - seq
        if offset >= SEQ_WINDOW or self.seen >> offset & 1:
            return False
        self.seen |= 1 << offset
        return True


class BusCodec:
    """Signs this node's messages and checks everyone's.

    ``node_id`` should differ across restarts of a node (fold in a boot id): sequence numbers
    start again at 0 and would otherwise be refused as replays until the window moves on.
    """

    def __init__(self, secret: bytes, node_id: str, *, replay_window_ms: int) -> None:
        if len(secret) < MIN_SECRET:
            raise ValueError(
                f"cluster secret too short: {len(secret)} bytes, at least {MIN_SECRET}"
            )
        sender = node_id.encode()
        if not 0 < len(sender) <= MAX_SENDER:
            raise ValueError(f"node id must be 1..{MAX_SENDER} bytes")
        self._secret = secret
        self._sender = sender
        self._node_id = node_id
        self._window_ms = replay_window_ms
        self._next_seq = 0
        self._windows: dict[str, _SeqWindow] = {}
        self.refused: Counter[Refusal] = Counter()
        self.accepted = 0

    def encode(self, kind: Kind, body: bytes, now_ms: int) -> bytes:
        seq = self._next_seq
        self._next_seq += 1
        signed = b"".join(
            (
                MAGIC,
                bytes((len(self._sender),)),
                self._sender,
                _HEADER.pack(seq, now_ms, kind),
                body,
            )
        )
        return signed + hmac.digest(self._secret, signed, "sha256")

    def decode(self, data: bytes, now_ms: int) -> BusMessage | None:
        """The message if it is authentic, fresh and new; otherwise None, counted."""
        message = self._parse(data)
        if isinstance(message, Refusal):
            self.refused[message] += 1
            return None
        if abs(now_ms - message.timestamp_ms) > self._window_ms:
            self.refused[Refusal.STALE] += 1
            return None
        if message.sender == self._node_id:
            self.refused[Refusal.OWN] += 1
            return None
        window = self._windows.get(message.sender)
        if window is None:
            window = self._windows[message.sender] = _SeqWindow()
        if not window.accept(message.seq):
            self.refused[Refusal.REPLAYED] += 1
            return None
        self.accepted += 1
        return message

    def _parse(self, data: bytes) -> BusMessage | Refusal:
        if len(data) < len(MAGIC) + 1 + _HEADER.size + MAC_SIZE or not data.startswith(MAGIC):
            return Refusal.MALFORMED
        signed, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
        # The MAC first: nothing of an unauthenticated message is interpreted further.
        if not hmac.compare_digest(mac, hmac.digest(self._secret, signed, "sha256")):
            return Refusal.BAD_MAC
        length = signed[len(MAGIC)]
        start = len(MAGIC) + 1
        if not 0 < length <= MAX_SENDER or len(signed) < start + length + _HEADER.size:
            return Refusal.MALFORMED
        try:
            sender = signed[start : start + length].decode()
        except UnicodeDecodeError:
            return Refusal.MALFORMED
        seq, timestamp_ms, kind = _HEADER.unpack_from(signed, start + length)
        try:
            kind_value = Kind(kind)
        except ValueError:
            return Refusal.MALFORMED
        body = bytes(signed[start + length + _HEADER.size :])
        return BusMessage(sender, seq, timestamp_ms, kind_value, body)


def media_body(room: str, datagram: bytes) -> bytes:
    """A MEDIA message's body: the room inside the signed part (a relayed datagram cannot be
    replayed into another room's channel), then the SRTP datagram unchanged."""
    name = room.encode()
    if not 0 < len(name) <= 255:
        raise ValueError("room id must be 1..255 bytes")
    return bytes((len(name),)) + name + datagram


def split_media_body(body: bytes) -> tuple[str, bytes] | None:
    """(room, datagram) of a MEDIA body, or None when malformed."""
    if not body or len(body) < 1 + body[0]:
        return None
    try:
        room = body[1 : 1 + body[0]].decode()
    except UnicodeDecodeError:
        return None
    return room, body[1 + body[0] :]


_DATAGRAM_LENGTH = struct.Struct("!H")


def media_batch_body(room: str, datagrams: list[bytes]) -> bytes:
    """A MEDIA_BATCH body: the room once (inside the signed part, like ``media_body``), then
    each datagram unchanged behind its 16-bit length."""
    name = room.encode()
    if not 0 < len(name) <= 255:
        raise ValueError("room id must be 1..255 bytes")
    parts = [bytes((len(name),)), name]
    for datagram in datagrams:
        parts.append(_DATAGRAM_LENGTH.pack(len(datagram)))
        parts.append(datagram)
    return b"".join(parts)


def split_media_batch_body(body: bytes) -> tuple[str, list[bytes]] | None:
    """(room, datagrams) of a MEDIA_BATCH body, or None when malformed (a length running past
    the end, an empty batch, a room that is not UTF-8)."""
    if not body or len(body) < 1 + body[0] or body[0] == 0:
        return None
    try:
        room = body[1 : 1 + body[0]].decode()
    except UnicodeDecodeError:
        return None
    datagrams: list[bytes] = []
    offset = 1 + body[0]
    while offset < len(body):
        if offset + _DATAGRAM_LENGTH.size > len(body):
            return None
        (length,) = _DATAGRAM_LENGTH.unpack_from(body, offset)
        offset += _DATAGRAM_LENGTH.size
        if offset + length > len(body):
            return None
        datagrams.append(body[offset : offset + length])
        offset += length
    return (room, datagrams) if datagrams else None


MAX_BATCH_PAYLOAD = 1200
"""Bytes of datagrams packed into one relay message at most (with the framing a UDP datagram
stays under a 1500-byte MTU); a single larger datagram travels alone."""


def packed(datagrams: list[bytes]) -> list[list[bytes]]:
    """Groups of datagrams, in order, each within MAX_BATCH_PAYLOAD bytes of batch body."""
    groups: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for datagram in datagrams:
        cost = len(datagram) + _DATAGRAM_LENGTH.size
        if current and size + cost > MAX_BATCH_PAYLOAD:
            groups.append(current)
            current, size = [], 0
        current.append(datagram)
        size += cost
    if current:
        groups.append(current)
    return groups


def group_by_room(items: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    """Queued (room, datagram) pairs as each room's datagrams, in order."""
    rooms: dict[str, list[bytes]] = {}
    for room, datagram in items:
        rooms.setdefault(room, []).append(datagram)
    return rooms


@dataclass(slots=True)
class DropOldestQueue(Generic[T]):
    """A bounded FIFO that, when full, drops its oldest item (stale audio is worthless)."""

    limit: int
    items: list[T] = field(default_factory=list)
    dropped: int = 0

    def push(self, item: T) -> None:
        self.items.append(item)
        excess = len(self.items) - self.limit
        if excess > 0:
            del self.items[:excess]
            self.dropped += excess

    def take_all(self) -> list[T]:
        items, self.items = self.items, []
        return items
