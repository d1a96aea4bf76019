"""Media between nodes in UDP datagrams, node to node; Redis only for discovery and interest
(docs/cluster.md, "Media plane").

The same interface and guarantees as ``RedisMediaRelay``, one hop instead of two:

- **Interest** lives in Redis: a node following a room adds its relay address to the sorted
  set ``salon:relay:interest:<room>`` (score: when the entry expires, refreshed every
  ``refresh_ms``; a dead node's entry lapses after three periods) and announces the change on
  ``salon:relay:interest``. A sender reads a room's set the first time it relays for it, again on
  each announcement and every ``refresh_ms``, and sends only to those addresses: a node without
  members in a room gets none of its media. A datagram for a room the receiver no longer follows
  (the sender's view lags an unfollow by one announcement) is dropped there, counted.
- **Media** is signed by the bus codec (HMAC-SHA256 with the cluster secret, sequence number
  and timestamp: tampered, foreign and replayed datagrams are refused and counted) as one
  ``MEDIA_BATCH`` message per room per flush, sized to fit one UDP datagram on a 1500-byte
  path, encoded once and sent to each interested node: each node gets each datagram once, the
  SRTP bytes unchanged (no node decrypts).
- **Queue**: publishing waits in a bounded drop-oldest queue (counted) that is flushed on the
  next turn of the event loop (``tick_ms=0``, the lowest latency: packets published in the same
  turn leave together) or every ``tick_ms``. A full kernel send buffer drops that datagram,
  counted in ``send_errors``.

Why UDP with the bus codec rather than QUIC datagrams: the payload is already SRTP, so the
relay needs authenticity and freshness, not secrecy, and the codec gives both with one HMAC per
message; QUIC would add a handshake per node pair, per-packet AEAD, ACK traffic and congestion
state, all in Python, on the path whose cost per packet the benchmark measures
(bench/cluster_relay.py). The trade-off: relay datagrams are not encrypted, so the room id is
visible on the wire between nodes (the media itself is SRTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

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
)
from salon.daemon.cluster.tasks import cancel_and_wait

log = logging.getLogger("salond.cluster")

INTEREST_KEY = "salon:relay:interest:"
INTEREST_CHANNEL = "salon:relay:interest"
MAX_RECEIVE = 65535
READS_PER_WAKEUP = 256
"""Datagrams read per readiness callback at most (batched reads: one loop turn, many packets)."""
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
"""Receive and send buffer asked for on the relay socket (the kernel caps it at
``net.core.rmem_max``): it takes every room's media from every node, and with the default
(~200 KiB, a few hundred small datagrams) a pause of the event loop of some tens of
milliseconds at a few thousand packets per second overflows it (measured: 3.5% lost at 4,000
packets/s on a busy 2-core machine)."""
ENTRY_LIFETIME_REFRESHES = 3
PRUNE_EVERY = 10
"""Refresh periods between two prunings of lapsed entries from the interest sets."""
IDLE_ROOM_S = 60.0
"""A room this node has not relayed for in this long is forgotten (its interest not re-read)."""

REFRESH_SCRIPT = """
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[2], ARGV[1])
  redis.call('PEXPIRE', key, ARGV[3])
  if ARGV[4] ~= '' then redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[4]) end
end
return #KEYS
"""
"""KEYS: interest sets; ARGV: this node's address, its new expiry, the keys' lifetime (ms),
and a time before which lapsed entries are pruned ('' for none)."""
LOOKUP_SCRIPT = """
local lines = {}
for i, key in ipairs(KEYS) do
  lines[i] = table.concat(redis.call('ZRANGEBYSCORE', key, ARGV[1], '+inf'), ' ')
end
return table.concat(lines, '\\n')
"""
"""KEYS: interest sets; ARGV: now (ms). One line per key, its live members separated by
spaces: one bulk reply, split in C, instead of an array per room parsed in Python."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _address_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_address(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


class UdpMediaRelay:
    """Sends local speakers' datagrams straight to the interested nodes, delivers remote ones to
    ``on_media(room, datagram)``."""

    def __init__(
        self,
        redis: Redis,
        codec: BusCodec,
        on_media: Callable[[str, bytes], None],
        *,
        queue_limit: int,
        tick_ms: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        refresh_ms: int = 1000,
    ) -> None:
        self._redis = redis
        self._codec = codec
        self._on_media = on_media
        # redis-py's scripts run by their SHA and load themselves again after a Redis restart.
        self._refresh_script = redis.register_script(REFRESH_SCRIPT)
        self._lookup_script = redis.register_script(LOOKUP_SCRIPT)
        self._tick = tick_ms / 1000
        self._host = host
        self._port = port
        self._advertise_host = advertise_host or host
        self._refresh_ms = refresh_ms
        self.outbound: DropOldestQueue[tuple[str, bytes]] = DropOldestQueue(queue_limit)
        self.rooms: set[str] = set()
        self.address = ""
        """``host:port`` other nodes send to (known after ``start``)."""
        self._targets: dict[str, list[tuple[str, int]]] = {}
        self._last_used: dict[str, float] = {}
        self._sock: socket.socket | None = None
        self._pubsub: PubSub | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        """Datagrams sent (once, whatever the number of nodes they went to)."""
        self.sent_messages = 0
        """UDP datagrams sent, counting each destination node."""
        self.delivered = 0
        self.received = 0
        """UDP datagrams read, before any check."""
        self.misrouted = 0
        """Authentic messages whose body is malformed or not media."""
        self.unwanted = 0
        """Media for a room this node does not follow (dropped)."""
        self.oversized = 0
        self.no_interest = 0
        """Datagrams published for a room no other node follows (nothing sent)."""
        self.send_errors = 0
        self.redis_failures = 0
        """Interest reads and writes Redis did not answer (the relay goes on meanwhile)."""
        self.lookups_failed = 0
        """Of those, reads of a room's interested nodes (the last view is kept)."""

    # -- the interface shared with RedisMediaRelay -------------------------------------------

    def publish(self, room: str, datagram: bytes) -> None:
        """Queue one datagram of a local speaker (never blocks; the oldest drop when full)."""
        self.outbound.push((room, datagram))
        if not self._wake.is_set():
            self._wake.set()

    async def follow(self, room: str) -> None:
        """Receive the room's media: call when the first local member joins it."""
        if not self.address:
            raise RuntimeError("start the relay before following rooms")
        if room in self.rooms:
            return
        self.rooms.add(room)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(INTEREST_KEY + room, {self.address: self._expiry_ms()})
                pipe.pexpire(INTEREST_KEY + room, self._lifetime_ms())
                pipe.publish(INTEREST_CHANNEL, room)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # The refresh loop re-asserts it when Redis is back.
            self.redis_failures += 1
            log.warning("cluster: announcing interest in %r failed: %s", room, exc)

    async def unfollow(self, room: str) -> None:
        """Stop receiving it: call when the last local member leaves."""
        if room not in self.rooms:
            return
        self.rooms.discard(room)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(INTEREST_KEY + room, self.address)
                pipe.publish(INTEREST_CHANNEL, room)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # The entry lapses on its own after three refresh periods.
            self.redis_failures += 1
            log.warning("cluster: withdrawing interest in %r failed: %s", room, exc)

    async def flush(self) -> None:
        """Send everything queued: per room, messages of up to MAX_BATCH_PAYLOAD bytes, each
        encoded once and sent to every interested node."""
        batch = self.outbound.take_all()
        if not batch:
            return
        monotonic = time.monotonic()
        unknown: dict[str, list[bytes]] = {}
        for room, datagrams in group_by_room(batch).items():
            self._last_used[room] = monotonic
            targets = self._targets.get(room)
            if targets is None:
                unknown[room] = datagrams
            else:
                self._send(room, datagrams, targets)
        if unknown:
            # A room's first packets wait for one round trip to Redis; the rooms already
            # known have left before it, not after.
            await self._lookup(*unknown)
            for room, datagrams in unknown.items():
                self._send(room, datagrams, self._targets.get(room, []))

    def _send(self, room: str, datagrams: list[bytes], targets: list[tuple[str, int]]) -> None:
        if not targets:
            self.no_interest += len(datagrams)
            return
        self.published += len(datagrams)
        now = _now_ms()
        sock = self._sock
        for group in packed(datagrams):
            message = self._codec.encode(Kind.MEDIA_BATCH, media_batch_body(room, group), now)
            for target in targets:
                try:
                    sock.sendto(message, target)  # type: ignore[union-attr]
                    self.sent_messages += 1
                except OSError:
                    self.send_errors += 1

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # a platform without the option: the default
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        sock.bind((self._host, self._port))
        self._sock = sock
        advertised = self._advertise_host
        with contextlib.suppress(OSError):  # a name: resolved once, not on every send
            found = await asyncio.get_running_loop().getaddrinfo(
                advertised, None, family=family, type=socket.SOCK_DGRAM
            )
            advertised = str(found[0][4][0]) if found else advertised
        self.address = _address_text(advertised, sock.getsockname()[1])
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.subscribe(INTEREST_CHANNEL)
        self._tasks = [
            asyncio.create_task(self._sender(), name="cluster-media-out"),
            asyncio.create_task(self._announcements(), name="cluster-interest-in"),
            asyncio.create_task(self._refresher(), name="cluster-interest-refresh"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        for room in list(self.rooms):
            await self.unfollow(room)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def interested(self, room: str) -> list[str] | None:
        """The nodes this relay sends the room's media to (``host:port``), as last read from
        Redis; None when it has not looked the room up."""
        targets = self._targets.get(room)
        return None if targets is None else [_address_text(*target) for target in targets]

    # -- receiving ------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """One datagram from the socket: checked, then handed on (or counted and dropped)."""
        self.received += 1
        if len(data) > MAX_RECEIVE:
            self.oversized += 1
            return
        message = self._codec.decode(data, _now_ms())
        if message is None:
            return
        parts = split_media_batch_body(message.body) if message.kind is Kind.MEDIA_BATCH else None
        if parts is None:
            self.misrouted += 1
            return
        room, datagrams = parts
        if room not in self.rooms:
            self.unwanted += len(datagrams)
            return
        self.delivered += len(datagrams)
        for datagram in datagrams:
            self._on_media(room, datagram)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(READS_PER_WAKEUP):
            try:
                data = sock.recv(MAX_RECEIVE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("cluster: relay socket: %s", exc)
                continue
            self.receive(data)

    # -- interest -------------------------------------------------------------------------

    def _lifetime_ms(self) -> int:
        return self._refresh_ms * ENTRY_LIFETIME_REFRESHES

    def _expiry_ms(self) -> int:
        return _now_ms() + self._lifetime_ms()

    async def _lookup(self, *rooms: str) -> list[tuple[str, int]]:
        """Read the rooms' interested nodes from Redis into the cache, in one round trip;
        returns the first room's. When Redis cannot say, the cache stays as it was: media
        keeps flowing to the nodes known during an outage."""
        if not rooms:
            return []
        try:
            answer = await self._lookup_script(
                keys=[INTEREST_KEY + room for room in rooms], args=[_now_ms()]
            )
        except (RedisError, OSError) as exc:
            self.redis_failures += 1
            self.lookups_failed += 1
            log.warning("cluster: reading relay interest failed: %s", exc)
            return self._targets.setdefault(rooms[0], [])
        text = answer.decode(errors="replace") if isinstance(answer, bytes) else str(answer)
        lines = text.split("\n")
        if len(lines) != len(rooms):  # one line per room, an empty one for no follower
            self.lookups_failed += 1
            log.warning(
                "cluster: relay interest answer has %d lines for %d rooms", len(lines), len(rooms)
            )
            return self._targets.setdefault(rooms[0], [])
        parsed: dict[str, list[tuple[str, int]]] = {}  # rooms followed by the same nodes
        for room, line in zip(rooms, lines, strict=True):
            targets = parsed.get(line)
            if targets is None:
                targets = []
                for member in line.split():
                    address = _parse_address(member)
                    if address is not None and member != self.address:
                        targets.append(address)
                parsed[line] = targets
            self._targets[room] = targets  # shared between rooms: never changed in place
        return self._targets[rooms[0]]

    async def _announcements(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        while True:
            try:
                if not pubsub.subscribed:
                    await pubsub.subscribe(INTEREST_CHANNEL)
                item = await pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                self.redis_failures += 1
                log.warning("cluster: interest announcements failed: %s", exc)
                await asyncio.sleep(self._refresh_ms / 1000)
                continue
            if item is None or item.get("type") != "message":
                continue
            data = item["data"]
            room = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
            if room in self._targets:
                await self._lookup(room)

    async def refresh(self, *, prune: bool = False) -> None:
        """Re-assert this node's interest and re-read the rooms it relays for: one period's
        work, two round trips whatever the number of rooms."""
        if self.rooms:
            # The key lapses with its last live follower; lapsed entries of dead nodes in a
            # live key are pruned now and then (readers skip them by their score anyway).
            await self._refresh_script(
                keys=[INTEREST_KEY + room for room in self.rooms],
                args=[
                    self.address,
                    self._expiry_ms(),
                    self._lifetime_ms(),
                    str(_now_ms()) if prune else "",
                ],
            )
        if self._targets:
            await self._lookup(*self._targets)

    async def _refresher(self) -> None:
        """Refresh every period (after a Redis restart this is what puts the entries back)."""
        refreshes = 0
        while True:
            await asyncio.sleep(self._refresh_ms / 1000)
            refreshes += 1
            idle = time.monotonic() - IDLE_ROOM_S
            for room in [r for r, used in self._last_used.items() if used < idle]:
                self._last_used.pop(room, None)
                self._targets.pop(room, None)
            try:
                await self.refresh(prune=refreshes % PRUNE_EVERY == 0)
            except (RedisError, OSError) as exc:
                self.redis_failures += 1
                log.warning("cluster: refreshing relay interest failed: %s", exc)
            except Exception:  # never let the refresher die: interest would lapse
                log.exception("cluster: refreshing relay interest failed")

    async def _sender(self) -> None:
        while True:
            await self._wake.wait()
            if self._tick:
                await asyncio.sleep(self._tick)
            self._wake.clear()
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                log.warning("cluster: media send failed: %s", exc)
            except Exception:  # the relay must outlive any one bad flush
                log.exception("cluster: media send failed")
