"""The node-to-node UDP media relay between nodes sharing a real redis-server (started by the
test) for discovery and interest: real SRTP datagrams arrive byte-identical, once, in order, on
each interested node; a node without members in the room is sent nothing; tampered, foreign,
replayed and unwanted datagrams are refused and counted; interest comes back after Redis
loses it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from salon.daemon.cluster.bus import (
    MAX_BATCH_PAYLOAD,
    BusCodec,
    Kind,
    Refusal,
    media_batch_body,
    packed,
    split_media_batch_body,
)
from salon.daemon.cluster.relay import RedisMediaRelay, make_media_relay
from salon.daemon.cluster.udp_relay import INTEREST_KEY, UdpMediaRelay
from tests.redis_server import running_redis
from tests.test_cluster_registry import redis_url  # noqa: F401  (the module-scoped server)
from tests.test_cluster_relay import SECRET, srtp_datagrams


class Node:
    def __init__(self, url: str, name: str, *, refresh_ms: int = 1000) -> None:
        self.redis = Redis.from_url(url)
        self.codec = BusCodec(SECRET, name, replay_window_ms=5000)
        self.got: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()
        self.relay = UdpMediaRelay(
            self.redis, self.codec, self._media, queue_limit=4096, refresh_ms=refresh_ms
        )

    def _media(self, room: str, datagram: bytes) -> None:
        self.got.append((room, datagram))
        self.arrived.set()

    async def received(self, count: int) -> None:
        """Wait until ``count`` datagrams arrived (an event wait; the bound only stops a hang)."""
        while len(self.got) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 30)

    async def close(self) -> None:
        await self.relay.stop()
        await self.redis.aclose()


async def until(condition: object, *, what: str) -> None:
    """A readiness wait on state another task changes (bounded only against a hang)."""
    deadline = time.monotonic() + 30
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[tuple[Node, Node, Node]]:  # noqa: F811
    flush = Redis.from_url(redis_url)
    await flush.flushdb()
    await flush.aclose()
    a, b, c = (Node(redis_url, name, refresh_ms=200) for name in "abc")
    for node in (a, b, c):
        await node.relay.start()
    try:
        yield a, b, c
    finally:
        for node in (a, b, c):
            await node.close()


async def test_media_reaches_each_interested_node_once_byte_identical(
    nodes: tuple[Node, Node, Node],
) -> None:
    a, b, c = nodes
    await b.relay.follow("room1")
    await b.relay.follow("other")
    await c.relay.follow("other")  # no members in room1
    await a.relay.follow("other")  # the sender's own interest: it never sends to itself
    # A node that died following room1: its entry has lapsed, it must be sent nothing.
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead.setblocking(False)
    dead_address = f"127.0.0.1:{dead.getsockname()[1]}"
    await a.redis.zadd(INTEREST_KEY + "room1", {dead_address: int(time.time() * 1000) - 1})
    packets = srtp_datagrams(50)
    for packet in packets:
        a.relay.publish("room1", packet)
    a.relay.publish("other", b"marker")  # after room1's, in the same flush: c's chance passed
    await a.relay.flush()
    await c.received(1)
    await b.received(len(packets) + 1)
    assert b.got == [("room1", packet) for packet in packets] + [("other", b"marker")]
    assert c.got == [("other", b"marker")]
    # c was sent nothing of room1, not even something it had to drop.
    assert (c.relay.received, c.relay.unwanted) == (1, 0)
    assert a.relay.received == 0
    with pytest.raises(BlockingIOError):  # loopback delivers within sendto: nothing came
        dead.recv(2048)
    dead.close()
    # Batched: 50 packets of ~90 bytes in a few datagrams, the marker encoded once for b and c.
    assert b.relay.received < 10
    assert a.relay.published == 51


async def test_tampered_foreign_replayed_and_unwanted_datagrams_are_refused(
    nodes: tuple[Node, Node, Node],
) -> None:
    a, b, _ = nodes
    await b.relay.follow("room1")
    now = int(time.time() * 1000)

    def batch(room: str, payload: bytes, codec: BusCodec = a.codec) -> bytes:
        return codec.encode(Kind.MEDIA_BATCH, media_batch_body(room, [payload]), now)

    genuine = batch("room1", b"\x80genuine")
    tampered = bytearray(batch("room1", b"\x80evil"))
    tampered[-40] ^= 0xFF
    foreign = batch("room1", b"\x80foreign", BusCodec(os.urandom(32), "x", replay_window_ms=5000))
    unwanted = batch("room2", b"\x80elsewhere")
    last = batch("room1", b"\x80last")
    host, port = b.relay.address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        for message in (genuine, bytes(tampered), foreign, genuine, b"junk", unwanted, last):
            attacker.sendto(message, (host, int(port)))
        await b.received(2)
    assert b.got == [("room1", b"\x80genuine"), ("room1", b"\x80last")]
    assert b.codec.refused[Refusal.BAD_MAC] == 2
    assert b.codec.refused[Refusal.REPLAYED] == 1
    assert b.codec.refused[Refusal.MALFORMED] == 1
    assert b.relay.unwanted == 1


async def test_unfollowed_room_is_no_longer_sent(nodes: tuple[Node, Node, Node]) -> None:
    a, b, _ = nodes
    await b.relay.follow("room1")
    await b.relay.follow("room2")
    a.relay.publish("room1", b"first")
    await a.relay.flush()
    await b.received(1)
    await b.relay.unfollow("room1")
    assert await a.redis.zscore(INTEREST_KEY + "room1", b.relay.address) is None
    await until(lambda: a.relay.interested("room1") == [], what="a learns b left room1")
    a.relay.publish("room1", b"unwanted")
    a.relay.publish("room2", b"wanted")
    await a.relay.flush()
    await b.received(2)
    assert b.got == [("room1", b"first"), ("room2", b"wanted")]
    assert b.relay.unwanted == 0  # never sent, not merely dropped on arrival
    assert a.relay.no_interest == 1


async def test_interest_is_reasserted_after_redis_loses_it(nodes: tuple[Node, Node, Node]) -> None:
    a, b, _ = nodes
    await b.relay.follow("room1")
    await a.redis.flushdb()  # what a Redis restart without persistence leaves
    key = INTEREST_KEY + "room1"
    await until_async(lambda: a.redis.zcard(key), what="b re-announces its interest")

    async def lapses() -> bool:  # the key has a time to live: it goes with its last follower
        return 0 < await a.redis.pttl(key) <= 3 * 200

    await until_async(lapses, what="the interest key expires on its own")
    # a has never looked room1 up: its first flush reads the re-announced interest.
    a.relay.publish("room1", b"after")
    await a.relay.flush()
    await b.received(1)
    assert b.got == [("room1", b"after")]


async def until_async(read: object, *, what: str) -> None:
    deadline = time.monotonic() + 30
    while not await read():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


def test_batches_round_trip_and_malformed_bodies_are_refused() -> None:
    datagrams = [os.urandom(n) for n in (1, 100, 700, 700, 1300, 50)]
    groups = packed(datagrams)
    assert [d for group in groups for d in group] == datagrams
    assert all(sum(len(d) + 2 for d in g) <= MAX_BATCH_PAYLOAD or len(g) == 1 for g in groups)
    body = media_batch_body("room", datagrams)
    assert split_media_batch_body(body) == ("room", datagrams)
    for broken in (body[:-1], body + b"\x00", b"\x04room", b"\x00", b"", b"\x09room"):
        assert split_media_batch_body(broken) is None


async def test_outbound_queue_drops_oldest(redis_url: str) -> None:  # noqa: F811
    redis = Redis.from_url(redis_url)
    relay = UdpMediaRelay(
        redis, BusCodec(SECRET, "a", replay_window_ms=1000), print, queue_limit=16
    )
    for index in range(20):
        relay.publish("r", bytes([index]))
    assert [data for _, data in relay.outbound.items] == [bytes([i]) for i in range(4, 20)]
    assert relay.outbound.dropped == 4
    await redis.aclose()


async def test_transport_is_chosen_by_name(redis_url: str) -> None:  # noqa: F811
    redis = Redis.from_url(redis_url)
    codec = BusCodec(SECRET, "a", replay_window_ms=1000)
    assert isinstance(make_media_relay("udp", redis, codec, print, queue_limit=16), UdpMediaRelay)
    assert isinstance(
        make_media_relay("redis", redis, codec, print, queue_limit=16), RedisMediaRelay
    )
    with pytest.raises(ValueError, match="unknown relay transport 'quic'"):
        make_media_relay("quic", redis, codec, print, queue_limit=16)
    await redis.aclose()


async def test_media_keeps_flowing_while_redis_is_away() -> None:
    with running_redis() as url:  # a server of its own: this test stops it
        a, b = Node(url, "a", refresh_ms=200), Node(url, "b", refresh_ms=200)
        await a.relay.start()
        await b.relay.start()
        await b.relay.follow("room1")
        a.relay.publish("room1", b"before")
        await a.relay.flush()
        await b.received(1)
    # Redis is gone: a keeps sending to the nodes it knew, b keeps accepting.
    await until(lambda: a.relay.lookups_failed > 0, what="a fails to re-read room1's interest")
    a.relay.publish("room1", b"during")
    await a.relay.flush()
    await b.received(2)
    assert b.got == [("room1", b"before"), ("room1", b"during")]
    for node in (a, b):
        node.relay.rooms.clear()  # nothing to withdraw from a server that is gone
        await node.close()


async def test_periodic_refresh_costs_two_commands_whatever_the_rooms(
    nodes: tuple[Node, Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh and re-read of many rooms are one script call each: a pipeline of a
    command per room is built and parsed without yielding, and stood the event loop still
    long enough to be the relay hop's p99 (bench/cluster_relay.py)."""
    a, b, c = nodes
    rooms = [f"room{index}" for index in range(60)]
    for room in rooms:
        await b.relay.follow(room)
    for room in rooms[::2]:
        await c.relay.follow(room)
    dead = "127.0.0.1:9"
    await a.redis.zadd(INTEREST_KEY + "room0", {dead: int(time.time() * 1000) - 1})
    for room in [*rooms, "nobody"]:
        a.relay.publish(room, b"\x80first")
    await a.relay.flush()  # a looks every room up, in one call
    await b.received(len(rooms))
    await c.received(len(rooms) // 2)
    for node in (a, b, c):
        await node.relay.refresh()  # the scripts are loaded in Redis from here on

    packed_commands = 0
    pack_command = AbstractConnection.pack_command

    def counting(self: AbstractConnection, *args: object) -> list[bytes]:
        nonlocal packed_commands
        packed_commands += 1
        return pack_command(self, *args)

    monkeypatch.setattr(AbstractConnection, "pack_command", counting)
    await b.relay.refresh(prune=True)
    await a.relay.refresh()
    monkeypatch.undo()
    # 2 here, and the nodes' own refreshers (every 200 ms) may send a few meanwhile; a
    # command per room would be over 120.
    assert packed_commands < 20, packed_commands
    assert await a.redis.zscore(INTEREST_KEY + "room0", dead) is None  # pruned
    for index, room in enumerate(rooms):
        expected = {b.relay.address} | ({c.relay.address} if index % 2 == 0 else set())
        assert set(a.relay.interested(room) or []) == expected, room
    assert a.relay.interested("nobody") == []
    assert a.relay.no_interest == 1


async def test_stop_ends_a_task_that_swallowed_its_cancellation() -> None:
    """redis-py can swallow a cancellation (a relay refresh returned normally while its task
    was being cancelled): the refresher then looped on and the relay's stop waited for ever."""
    from salon.daemon.cluster.tasks import cancel_and_wait

    swallowed = asyncio.Event()

    async def refresher() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # the first one only, as the library did

    task = asyncio.create_task(refresher())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait([task]))
    # The bound only stops a hang: with a single cancel() the stopper never ends.
    await asyncio.wait({stopper}, timeout=30)
    ended = stopper.done()
    for leftover in (stopper, task):
        leftover.cancel()
    assert ended and swallowed.is_set() and task.cancelled()


async def test_a_room_looked_up_for_the_first_time_does_not_hold_back_the_others(
    nodes: tuple[Node, Node, Node],
) -> None:
    a, b, _ = nodes
    await b.relay.follow("known")
    await b.relay.follow("fresh")
    a.relay.publish("known", b"\x80one")
    await a.relay.flush()  # a has looked "known" up
    await b.received(1)
    a.relay.publish("fresh", b"\x80first queued")  # a has never relayed for "fresh"
    a.relay.publish("known", b"\x80queued after it")
    await a.relay.flush()
    await b.received(3)
    # The known room's packet left before the round trip that looked the new room up.
    assert b.got[1:] == [("known", b"\x80queued after it"), ("fresh", b"\x80first queued")]
