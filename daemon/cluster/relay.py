"""Media between nodes through Redis pub/sub, pipelined per tick (docs/cluster.md, "Media plane").

Each speaker's SRTP datagrams are signed into bus messages (one per room per tick, several
datagrams each: a subscriber's cost is per message) and published once on the room's channel;
every node with local members in that room is subscribed and gets each datagram once, unchanged
(no node decrypts). Publishing waits in a bounded drop-oldest queue and leaves in one pipelined
round trip per tick: one PUBLISH awaited per packet saturates near 14k msg/s (measured, issue 16).

Not wired into salond yet: the building block for the relay, tested between two nodes.
``UdpMediaRelay`` (udp_relay.py) is the other transport behind the same interface (``MediaRelay``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from salon.daemon.cluster.bus import (
    BusCodec,
    DropOldestQueue,
    Kind,
    group_by_room,
    media_batch_body,
    packed,
    split_media_batch_body,
    split_media_body,
)
from salon.daemon.cluster.tasks import cancel_and_wait

log = logging.getLogger("salond.cluster")

MEDIA_CHANNEL = "salon:media:"


def _now_ms() -> int:
    return int(time.time() * 1000)


class RedisMediaRelay:
    """Publishes local speakers' datagrams, delivers remote ones to ``on_media(room, datagram)``."""

    def __init__(
        self,
        redis: Redis,
        codec: BusCodec,
        on_media: Callable[[str, bytes], None],
        *,
        queue_limit: int,
        tick_ms: int = 5,
    ) -> None:
        self._redis = redis
        self._codec = codec
        self._on_media = on_media
        self._tick = tick_ms / 1000
        self.outbound: DropOldestQueue[tuple[str, bytes]] = DropOldestQueue(queue_limit)
        self._pubsub: PubSub = redis.pubsub(ignore_subscribe_messages=True)
        self.rooms: set[str] = set()
        self.published = 0
        self.delivered = 0
        self.misrouted = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()

    def publish(self, room: str, datagram: bytes) -> None:
        """Queue one datagram of a local speaker (never blocks; the oldest drop when full)."""
        self.outbound.push((room, datagram))

    async def follow(self, room: str) -> None:
        """Receive the room's media: call when the first local member joins it."""
        if room not in self.rooms:
            self.rooms.add(room)
            await self._pubsub.subscribe(MEDIA_CHANNEL + room)
            self._subscribed.set()

    async def unfollow(self, room: str) -> None:
        """Stop receiving it: call when the last local member leaves."""
        if room in self.rooms:
            self.rooms.discard(room)
            await self._pubsub.unsubscribe(MEDIA_CHANNEL + room)

    async def flush(self) -> None:
        """Publish everything queued in one pipelined round trip, one message per room (of up
        to MAX_BATCH_PAYLOAD bytes of datagrams): a subscriber's cost is per message."""
        batch = self.outbound.take_all()
        if not batch:
            return
        now = _now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            for room, datagrams in group_by_room(batch).items():
                for group in packed(datagrams):
                    pipe.publish(
                        MEDIA_CHANNEL + room,
                        self._codec.encode(Kind.MEDIA_BATCH, media_batch_body(room, group), now),
                    )
            await pipe.execute()
        self.published += len(batch)

    def receive(self, channel: bytes | str, data: bytes) -> None:
        """One message from Redis: checked, then handed on (or counted and dropped)."""
        message = self._codec.decode(data, _now_ms())
        if message is None:
            return
        parts: tuple[str, list[bytes]] | None = None
        if message.kind is Kind.MEDIA_BATCH:
            parts = split_media_batch_body(message.body)
        elif message.kind is Kind.MEDIA:
            single = split_media_body(message.body)
            parts = None if single is None else (single[0], [single[1]])
        name = channel.decode(errors="replace") if isinstance(channel, bytes) else channel
        if parts is None or MEDIA_CHANNEL + parts[0] != name or parts[0] not in self.rooms:
            self.misrouted += 1
            return
        room, datagrams = parts
        self.delivered += len(datagrams)
        for datagram in datagrams:
            self._on_media(room, datagram)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publisher(), name="cluster-media-out"),
            asyncio.create_task(self._listener(), name="cluster-media-in"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        await self._pubsub.aclose()

    async def _publisher(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                # Redis away: this tick's audio is lost (stale by the next one anyway).
                log.warning("cluster: media publish failed: %s", exc)
            except Exception:  # the relay must outlive any one bad flush
                log.exception("cluster: media publish failed")

    async def _listener(self) -> None:
        while True:
            await self._subscribed.wait()  # get_message needs a subscription
            try:
                item = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("cluster: media subscription failed: %s", exc)
                await asyncio.sleep(self._tick)
                continue
            if item is not None and item.get("type") == "message":
                self.receive(item["channel"], item["data"])


class MediaRelay(Protocol):
    """What salond's forwarder needs of a media transport between nodes; ``RedisMediaRelay``
    and ``UdpMediaRelay`` both provide it (``[cluster] relay_transport`` chooses)."""

    rooms: set[str]
    published: int
    delivered: int
    outbound: DropOldestQueue[tuple[str, bytes]]

    def publish(self, room: str, datagram: bytes) -> None: ...
    async def follow(self, room: str) -> None: ...
    async def unfollow(self, room: str) -> None: ...
    async def flush(self) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


TRANSPORTS = ("udp", "redis")
"""The values of ``[cluster] relay_transport``."""


def make_media_relay(
    transport: str,
    redis: Redis,
    codec: BusCodec,
    on_media: Callable[[str, bytes], None],
    *,
    queue_limit: int,
    host: str = "127.0.0.1",
    port: int = 0,
    advertise_host: str | None = None,
    tick_ms: int | None = None,
) -> MediaRelay:
    """The relay of the transport named (``host``/``port``/``advertise_host``: where the UDP
    transport listens and what it tells other nodes; the Redis one ignores them). ``tick_ms``:
    how long publishing waits to batch; None: the transport's default (Redis 5 ms, UDP none,
    the next turn of the event loop)."""
    if transport == "redis":
        return RedisMediaRelay(
            redis,
            codec,
            on_media,
            queue_limit=queue_limit,
            tick_ms=5 if tick_ms is None else tick_ms,
        )
    if transport == "udp":
        from salon.daemon.cluster.udp_relay import UdpMediaRelay

        return UdpMediaRelay(
            redis,
            codec,
            on_media,
            queue_limit=queue_limit,
            host=host,
            port=port,
            advertise_host=advertise_host,
            tick_ms=tick_ms or 0,
        )
    raise ValueError(f"unknown relay transport {transport!r} (one of {', '.join(TRANSPORTS)})")
