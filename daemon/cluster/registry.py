"""The node registry in Redis: which salond nodes are alive, where, and how loaded.

Each node writes ``salon:node:<id>`` (a hash) with a time to live of three heartbeats and
refreshes it every heartbeat; ``salon:nodes`` lists the ids. A node whose hash expired is
dead, and readers prune it from the set (docs/cluster.md, "Node registry").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("salond.cluster")

NODES_KEY = "salon:nodes"
NODE_KEY = "salon:node:{}"
TTL_HEARTBEATS = 3


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """What a node reports about itself with each heartbeat."""

    sessions: int = 0
    rooms: int = 0


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    address: str
    started_at: float
    sessions: int
    rooms: int


class NodeRegistry:
    """Registers this node and lists the live ones."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        address: str,
        *,
        heartbeat_ms: int,
        load: Callable[[], NodeLoad] = NodeLoad,
    ) -> None:
        self._redis = redis
        self.node_id = node_id
        self._address = address
        self._heartbeat_ms = heartbeat_ms
        self._load = load
        self._started_at = time.time()
        self.heartbeats = 0
        self.failures = 0

    async def heartbeat(self) -> None:
        """Write this node's entry with a fresh time to live."""
        load = self._load()
        key = NODE_KEY.format(self.node_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "address": self._address,
                    "started_at": repr(self._started_at),
                    "sessions": load.sessions,
                    "rooms": load.rooms,
                },
            )
            pipe.pexpire(key, self._heartbeat_ms * TTL_HEARTBEATS)
            pipe.sadd(NODES_KEY, self.node_id)
            await pipe.execute()
        self.heartbeats += 1

    async def run(self) -> None:
        """Heartbeat until cancelled; a Redis outage is logged and retried, never fatal
        (after a Redis restart the next heartbeat re-registers the node)."""
        while True:
            try:
                await self.heartbeat()
            except (RedisError, OSError) as exc:
                self.failures += 1
                log.warning("cluster: heartbeat to Redis failed: %s", exc)
            await asyncio.sleep(self._heartbeat_ms / 1000)

    async def leave(self) -> None:
        """Deregister at a clean shutdown, so others need not wait for the entry to expire."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(NODE_KEY.format(self.node_id))
            pipe.srem(NODES_KEY, self.node_id)
            await pipe.execute()

    async def nodes(self) -> list[NodeInfo]:
        return await live_nodes(self._redis)


async def live_nodes(redis: Redis) -> list[NodeInfo]:
    """Every node whose entry has not expired, by id; expired ids are pruned from the set."""
    ids = sorted(_text(member) for member in await redis.smembers(NODES_KEY))
    found: list[NodeInfo] = []
    dead: list[str] = []
    for node_id in ids:
        fields = {
            _text(k): _text(v) for k, v in (await redis.hgetall(NODE_KEY.format(node_id))).items()
        }
        if not fields:
            dead.append(node_id)
            continue
        try:
            found.append(
                NodeInfo(
                    node_id=node_id,
                    address=fields.get("address", ""),
                    started_at=float(fields.get("started_at", "0")),
                    sessions=int(fields.get("sessions", "0")),
                    rooms=int(fields.get("rooms", "0")),
                )
            )
        except ValueError:
            log.warning("cluster: malformed registry entry for node %r ignored", node_id)
    if dead:
        await redis.srem(NODES_KEY, *dead)
    return found


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
