"""The cluster bus codec: authentic messages pass once; tampered, foreign, stale and replayed
ones are refused and counted (docs/cluster.md, "Authentication of inter-node messages")."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from salon.daemon.cluster.bus import MAC_SIZE, BusCodec, DropOldestQueue, Kind, Refusal

SECRET = b"s" * 32
NOW = 1_700_000_000_000


def pair() -> tuple[BusCodec, BusCodec]:
    return (
        BusCodec(SECRET, "node-a", replay_window_ms=5000),
        BusCodec(SECRET, "node-b", replay_window_ms=5000),
    )


def test_round_trip() -> None:
    a, b = pair()
    message = b.decode(a.encode(Kind.MEDIA, b"\x80srtp", NOW), NOW + 10)
    assert message is not None
    assert (message.sender, message.seq, message.kind, message.body) == (
        "node-a",
        0,
        Kind.MEDIA,
        b"\x80srtp",
    )
    assert b.accepted == 1 and not b.refused


@pytest.mark.parametrize("position", [0, 3, 5, 12, 20, -1, -MAC_SIZE])
def test_any_flipped_byte_is_refused(position: int) -> None:
    a, b = pair()
    data = bytearray(a.encode(Kind.CONTROL, b'{"op":"stage"}', NOW))
    data[position] ^= 0x01
    assert b.decode(bytes(data), NOW) is None
    assert sum(b.refused.values()) == 1
    assert b.accepted == 0


def test_foreign_secret_is_refused() -> None:
    stranger = BusCodec(b"x" * 32, "node-a", replay_window_ms=5000)
    _, b = pair()
    assert b.decode(stranger.encode(Kind.MEDIA, b"hi", NOW), NOW) is None
    assert b.refused[Refusal.BAD_MAC] == 1


def test_replay_is_refused_once_seen() -> None:
    a, b = pair()
    first, second = a.encode(Kind.MEDIA, b"1", NOW), a.encode(Kind.MEDIA, b"2", NOW)
    assert b.decode(second, NOW) is not None
    assert b.decode(first, NOW) is not None  # reordered, not replayed
    assert b.decode(first, NOW) is None
    assert b.decode(second, NOW) is None
    assert b.refused[Refusal.REPLAYED] == 2 and b.accepted == 2


def test_old_and_future_messages_are_refused() -> None:
    a, b = pair()
    assert b.decode(a.encode(Kind.MEDIA, b"x", NOW), NOW + 5001) is None
    assert b.decode(a.encode(Kind.MEDIA, b"x", NOW + 6000), NOW) is None
    assert b.refused[Refusal.STALE] == 2


def test_far_behind_sequence_is_refused() -> None:
    a, b = pair()
    old = a.encode(Kind.MEDIA, b"old", NOW)
    for _ in range(2000):
        newest = a.encode(Kind.MEDIA, b"n", NOW)
    assert b.decode(newest, NOW) is not None
    assert b.decode(old, NOW) is None
    assert b.refused[Refusal.REPLAYED] == 1


def test_own_messages_are_ignored() -> None:
    a, _ = pair()
    assert a.decode(a.encode(Kind.MEDIA, b"echo", NOW), NOW) is None
    assert a.refused[Refusal.OWN] == 1


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="too short"):
        BusCodec(b"short", "node-a", replay_window_ms=5000)


@given(st.binary(max_size=200))
def test_garbage_never_raises_and_is_counted(data: bytes) -> None:
    _, b = pair()
    assert b.decode(data, NOW) is None
    assert sum(b.refused.values()) == 1


def test_queue_drops_oldest_and_counts() -> None:
    queue = DropOldestQueue(limit=3)
    for item in (b"1", b"2", b"3", b"4", b"5"):
        queue.push(item)
    assert queue.take_all() == [b"3", b"4", b"5"]
    assert queue.dropped == 2
    assert queue.take_all() == []


async def test_control_messages_are_sealed_and_tampering_is_refused() -> None:
    """Control messages carry speaker keys: Redis sees them sealed; a tampered, foreign or
    replayed one is refused and counted, never handed on."""
    from redis.asyncio import Redis

    from salon.daemon.cluster.control import ControlBus, Gone, Sealer, _encoder

    secret = b"c" * 32
    got: list[object] = []
    redis = Redis.from_url("redis://127.0.0.1:1/0")  # never connected: receive() is offline
    sender = BusCodec(secret, "a/1", replay_window_ms=5000)
    bus = ControlBus(redis, BusCodec(secret, "b/1", replay_window_ms=5000), secret, "b", got.append)
    plain = _encoder.encode([Gone(node="a", session=7)])
    sealed = Sealer(secret).seal(plain)
    assert plain not in sealed
    message = sender.encode(Kind.CONTROL, sealed, int(time.time() * 1000))
    bus.receive(message)
    assert got == [Gone(node="a", session=7)]
    bus.receive(message)  # replayed
    tampered = bytearray(sender.encode(Kind.CONTROL, sealed, int(time.time() * 1000)))
    tampered[-40] ^= 1
    bus.receive(bytes(tampered))
    foreign = sender.encode(Kind.CONTROL, Sealer(b"x" * 32).seal(plain), int(time.time() * 1000))
    bus.receive(foreign)  # signed by a node, sealed with another secret
    assert got == [Gone(node="a", session=7)]
    assert bus.refused == 1 and bus._codec.refused[Refusal.REPLAYED] == 1
    assert bus._codec.refused[Refusal.BAD_MAC] == 1
    await redis.aclose()
