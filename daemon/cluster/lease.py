"""Room homes: one writer per room, held as a lease in Redis with a fencing epoch.

``salon:room:<id>:lease`` holds ``"<node_id> <epoch>"`` with a time to live; the first node with
a local member takes it (one atomic script: set if absent, ``INCR salon:room:<id>:epoch``), and
renews it by a script that extends it only while the value is still its own. The epoch is the
fencing token: it grows with every takeover, every event the home sends carries it, and an edge
drops events of a lower epoch than it has seen for that room (:class:`EpochGuard`). The lease
key is also the room directory: any node finds a room's home by reading it.

A home that cannot renew before its own deadline (measured from when it sent the last renewal
that succeeded, minus a safety margin, on its monotonic clock) stops acting as home on its own:
Redis may already have let the lease expire and another node taken it (docs/cluster.md). It is
*suspended*, not gone: when Redis answers again and nobody else took the lease (a Redis restart
loses every key), it takes the lease again under a new epoch and goes on; otherwise it has lost
the room. Redis need not persist anything: a new epoch is always above the highest the taker
knows (``floor``), even when Redis forgot the counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from salon.daemon.cluster.tasks import cancel_and_wait

log = logging.getLogger("salond.cluster")

LEASE_KEY = "salon:room:{}:lease"
EPOCH_KEY = "salon:room:{}:epoch"
LIVE_KEY = "salon:room:{}:live"
"""The room's volatile state (stage, hands), ``"<epoch> <json>"``, written by its home."""
ROOMS_KEY = "salon:rooms"
"""The room directory's list: ids of the rooms live in the cluster (a node takes over only a room
listed here, so a join of an unknown name costs one lookup, not a store load)."""
SAFETY_MARGIN = 0.25
"""Fraction of the lease a home gives up early: it stops acting as home this long before the
lease could have expired in Redis (clock rates differ; a renewal may be in flight)."""

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local epoch = redis.call('INCR', KEYS[2])
if epoch <= tonumber(ARGV[3]) then
  epoch = tonumber(ARGV[3]) + 1
  redis.call('SET', KEYS[2], epoch)
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return epoch
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_WRITE_LIVE = """
local current = redis.call('GET', KEYS[1])
if current then
  local epoch = tonumber(string.match(current, '^(%d+) '))
  if epoch and epoch > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Home:
    """Who holds a room's lease, under which epoch."""

    node: str
    epoch: int


def parse_lease(value: bytes | str | None) -> Home | None:
    """The lease value ``"<node> <epoch>"``, or None when absent or malformed."""
    if value is None:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    node, _, epoch = text.rpartition(" ")
    if not node or not epoch.isdigit():
        return None
    return Home(node, int(epoch))


class EpochGuard:
    """The highest home epoch seen per room: an event of a lower one is from a deposed home."""

    def __init__(self) -> None:
        self._highest: dict[str, int] = {}
        self.stale = 0
        """Events refused for a stale epoch."""

    def highest(self, room: str) -> int:
        return self._highest.get(room, 0)

    def accept(self, room: str, epoch: int) -> bool:
        if epoch < self._highest.get(room, 0):
            self.stale += 1
            return False
        self._highest[room] = epoch
        return True

    def forget(self, room: str) -> None:
        self._highest.pop(room, None)


@dataclass(slots=True)
class _Held:
    epoch: int
    deadline: float
    """Loop time after which this node no longer acts as the room's home."""
    suspended: bool = False
    """Past the deadline: not acting as home until the lease is taken again."""


class RoomLeases:
    """The leases this node holds, renewed in the background; ``on_lost(room)`` when one ends
    without :meth:`release` (taken over, or not renewed in time), ``on_regained(room)`` when one
    Redis forgot (a restart) is taken again."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        *,
        lease_ms: int,
        on_lost: Callable[[str], None],
        on_regained: Callable[[str], None] | None = None,
    ) -> None:
        self._redis = redis
        self.node_id = node_id
        self.lease_ms = lease_ms
        self._on_lost = on_lost
        self._on_regained = on_regained
        self._held: dict[str, _Held] = {}
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._write_live = redis.register_script(_WRITE_LIVE)
        self._task: asyncio.Task[None] | None = None
        self.lost = 0
        self.renew_failures = 0

    def epoch(self, room: str) -> int | None:
        """The epoch under which this node is the room's home now, or None."""
        held = self._held.get(room)
        if held is None or held.suspended:
            return None
        if asyncio.get_running_loop().time() >= held.deadline:
            self._suspend(room, held)
            return None
        return held.epoch

    def holds(self, room: str) -> bool:
        """Whether this node holds the room's lease, even suspended (it may take it again)."""
        return room in self._held

    def rooms(self) -> list[str]:
        return list(self._held)

    async def home(self, room: str) -> Home | None:
        """The room's home as the directory says (None: no node holds it)."""
        return parse_lease(await self._redis.get(LEASE_KEY.format(room)))

    async def redis_uptime(self) -> float:
        """Seconds since Redis started (a restart forgets every lease and registry entry)."""
        info = await self._redis.info("server")
        try:
            return float(info.get("uptime_in_seconds", "inf"))
        except (TypeError, ValueError):
            return float("inf")

    async def homes(self, rooms: list[str]) -> list[Home | None]:
        """The homes of several rooms in one round trip (None where no node holds it)."""
        if not rooms:
            return []
        values = await self._redis.mget([LEASE_KEY.format(room) for room in rooms])
        return [parse_lease(value) for value in values]

    async def acquire(self, room: str, floor: int = 0) -> int | None:
        """Become the room's home if nobody is: the new epoch (above ``floor``, the highest
        this node has seen), or None if another node is."""
        sent = asyncio.get_running_loop().time()
        epoch = int(
            await self._acquire(
                keys=[LEASE_KEY.format(room), EPOCH_KEY.format(room)],
                args=[self.node_id, self.lease_ms, floor],
            )
        )
        if epoch == 0:
            return None
        self._held[room] = _Held(epoch, self._deadline(sent))
        log.info("cluster: home of room %s (epoch %d)", room, epoch)
        await self.list_room(room)  # re-listed after a Redis restart forgot the directory
        return epoch

    async def write_live(self, room: str, epoch: int, state: str) -> bool:
        """Store the room's volatile state under ``epoch``; refused (False) when a home of a
        higher epoch wrote it already (a deposed home cannot overwrite its successor's)."""
        return bool(await self._write_live(keys=[LIVE_KEY.format(room)], args=[epoch, state]))

    async def read_live(self, room: str) -> tuple[int, str] | None:
        """The room's volatile state as last written: (epoch, JSON text), or None."""
        value = await self._redis.get(LIVE_KEY.format(room))
        if value is None:
            return None
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        epoch, _, state = text.partition(" ")
        return (int(epoch), state) if epoch.isdigit() else None

    async def forget_live(self, room: str) -> None:
        await self._redis.delete(LIVE_KEY.format(room))

    async def listed(self, room: str) -> bool:
        return bool(await self._redis.sismember(ROOMS_KEY, room))

    async def list_room(self, room: str) -> None:
        await self._redis.sadd(ROOMS_KEY, room)

    async def unlist_room(self, room: str) -> None:
        await self._redis.srem(ROOMS_KEY, room)

    async def release(self, room: str) -> None:
        held = self._held.pop(room, None)
        if held is not None:
            await self._release(keys=[LEASE_KEY.format(room)], args=[self._value(held)])

    async def renew_all(self) -> None:
        loop = asyncio.get_running_loop()
        for room, held in list(self._held.items()):
            sent = loop.time()
            try:
                renewed = not held.suspended and await self._renew(
                    keys=[LEASE_KEY.format(room)], args=[self._value(held), self.lease_ms]
                )
                if self._held.get(room) is not held:
                    continue  # released meanwhile
                if renewed:
                    held.deadline = self._deadline(sent)
                    continue
                # Not ours in Redis (any more): gone after a Redis restart, or taken over.
                if await self.acquire(room, floor=held.epoch) is not None:
                    log.info("cluster: lease of room %s taken again", room)
                    if self._on_regained is not None:
                        self._on_regained(room)
                else:
                    self._lose(room, "taken over")
            except (RedisError, OSError) as exc:
                self.renew_failures += 1
                log.warning("cluster: renewing the lease of room %s failed: %s", room, exc)
                if loop.time() >= held.deadline:
                    self._suspend(room, held)

    async def run(self) -> None:
        interval = self.lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            await self.renew_all()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="cluster-leases")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        for room in list(self._held):
            with contextlib.suppress(RedisError, OSError):
                await self.release(room)

    def _deadline(self, sent: float) -> float:
        return sent + self.lease_ms * (1 - SAFETY_MARGIN) / 1000

    def _value(self, held: _Held) -> str:
        return f"{self.node_id} {held.epoch}"

    def _suspend(self, room: str, held: _Held) -> None:
        if not held.suspended:
            held.suspended = True
            log.warning("cluster: lease of room %s not renewed in time: not acting as home", room)

    def _lose(self, room: str, why: str) -> None:
        if self._held.pop(room, None) is None:
            return
        self.lost += 1
        log.warning("cluster: no longer home of room %s (%s)", room, why)
        self._on_lost(room)
