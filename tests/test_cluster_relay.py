"""Media between two nodes through a real redis-server: a speaker's SRTP datagrams published
on node A reach node B byte-identical, once; a node without members in the room gets none;
tampered and replayed bus messages are refused and counted."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pylibsrtp
import pytest
from redis.asyncio import Redis

from salon.daemon.cluster.bus import BusCodec, Kind, Refusal, media_body
from salon.daemon.cluster.relay import MEDIA_CHANNEL, RedisMediaRelay
from tests.test_cluster_registry import redis_url  # noqa: F401  (the module-scoped server)

SECRET = os.urandom(32)


def srtp_datagrams(count: int) -> list[bytes]:
    """Real SRTP packets (what a speaker sends; the relay never decrypts them)."""
    policy = pylibsrtp.Policy(key=os.urandom(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    session = pylibsrtp.Session(policy)
    packets = []
    for seq in range(count):
        header = bytes([0x80, 111]) + seq.to_bytes(2, "big") + (seq * 960).to_bytes(4, "big")
        rtp = header + (1234).to_bytes(4, "big") + os.urandom(60)
        packets.append(session.protect(rtp))
    return packets


class Node:
    def __init__(self, url: str, name: str) -> None:
        self.redis = Redis.from_url(url)
        self.codec = BusCodec(SECRET, name, replay_window_ms=5000)
        self.got: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()
        self.relay = RedisMediaRelay(self.redis, self.codec, self._media, queue_limit=4096)

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


async def subscribed(redis: Redis, room: str, count: int) -> None:
    """Wait until Redis has ``count`` subscribers on the room's channel (a readiness wait)."""
    channel = MEDIA_CHANNEL + room
    while (await redis.pubsub_numsub(channel))[0][1] < count:
        await asyncio.sleep(0.02)


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[tuple[Node, Node, Node]]:  # noqa: F811
    a, b, c = Node(redis_url, "a"), Node(redis_url, "b"), Node(redis_url, "c")
    for node in (a, b, c):
        await node.relay.start()
    try:
        yield a, b, c
    finally:
        for node in (a, b, c):
            await node.close()


async def test_media_reaches_the_interested_node_byte_identical(
    nodes: tuple[Node, Node, Node],
) -> None:
    a, b, c = nodes
    await b.relay.follow("room1")
    await c.relay.follow("other")  # a node with no members in room1
    await subscribed(a.redis, "room1", 1)
    await subscribed(a.redis, "other", 1)
    packets = srtp_datagrams(50)
    for packet in packets:
        a.relay.publish("room1", packet)
    a.relay.publish("other", b"marker")  # published after room1's: c has had its chance
    await a.relay.flush()
    await c.received(1)
    await b.received(len(packets))
    assert b.got == [("room1", packet) for packet in packets]
    assert c.got == [("other", b"marker")]


async def test_tampered_replayed_and_misrouted_messages_are_refused(
    nodes: tuple[Node, Node, Node],
) -> None:
    a, b, _ = nodes
    await b.relay.follow("room1")
    await subscribed(a.redis, "room1", 1)
    channel = MEDIA_CHANNEL + "room1"
    now = int(time.time() * 1000)
    genuine = a.codec.encode(Kind.MEDIA, media_body("room1", b"\x80genuine"), now)
    tampered = bytearray(a.codec.encode(Kind.MEDIA, media_body("room1", b"\x80evil"), now))
    tampered[-40] ^= 0xFF
    wrong_room = a.codec.encode(Kind.MEDIA, media_body("room2", b"\x80elsewhere"), now)
    last = a.codec.encode(Kind.MEDIA, media_body("room1", b"\x80last"), now)
    for message in (genuine, bytes(tampered), genuine, wrong_room, last):
        await a.redis.publish(channel, message)
    await b.received(2)
    assert b.got == [("room1", b"\x80genuine"), ("room1", b"\x80last")]
    assert b.codec.refused[Refusal.BAD_MAC] == 1
    assert b.codec.refused[Refusal.REPLAYED] == 1
    assert b.relay.misrouted == 1


async def test_unfollowed_room_delivers_nothing(nodes: tuple[Node, Node, Node]) -> None:
    a, b, _ = nodes
    await b.relay.follow("room1")
    await b.relay.follow("room2")
    await subscribed(a.redis, "room1", 1)
    await b.relay.unfollow("room1")
    await subscribed(a.redis, "room2", 1)
    while (await a.redis.pubsub_numsub(MEDIA_CHANNEL + "room1"))[0][1]:
        await asyncio.sleep(0.02)
    a.relay.publish("room1", b"unwanted")
    a.relay.publish("room2", b"wanted")
    await a.relay.flush()
    await b.received(1)
    assert b.got == [("room2", b"wanted")]


def test_outbound_queue_drops_oldest(redis_url: str) -> None:  # noqa: F811
    relay = RedisMediaRelay(
        Redis.from_url(redis_url),
        BusCodec(SECRET, "a", replay_window_ms=1000),
        lambda room, data: None,
        queue_limit=16,
    )
    for index in range(20):
        relay.publish("r", bytes([index]))
    assert [data for _, data in relay.outbound.items] == [bytes([i]) for i in range(4, 20)]
    assert relay.outbound.dropped == 4
