"""The node registry in Redis: which salond nodes are alive, where, and how loaded.

Each node writes ``salon:node:<id>`` (a hash) with a time to live of three heartbeats and
refreshes it every heartbeat; ``salon:nodes`` lists the ids. A node whose hash expired is
dead, and readers prune it from the set (docs/cluster.md, "Node registry").

Besides its load a node writes how clients reach it (``public``: host:port, and its
certificate's ``fingerprint``), which a redirect hands to a client, and the rooms it carries
(``room_ids``), which the console shows and the redirect policy prefers. After each heartbeat
it reads the whole registry back into :attr:`NodeRegistry.view`, the cached picture the admin
API, the metrics and the redirect decision use without waiting on Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("salond.cluster")

NODES_KEY = "salon:nodes"
NODE_KEY = "salon:node:{}"
TTL_HEARTBEATS = 3
MAX_LISTED_ROOMS = 1000
"""Room ids a node lists in its entry at most (the busiest first is the caller's choice):
the entry stays small, and a reader never parses an unbounded field."""
MAX_ROOM_IDS_FIELD = 256 * 1024
"""Bytes of the ``room_ids`` field a reader accepts; a longer one is ignored as malformed."""


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """What a node reports about itself with each heartbeat."""

    sessions: int = 0
    rooms: int = 0
    room_ids: tuple[str, ...] = ()
    """The rooms with members on this node (at most MAX_LISTED_ROOMS are written)."""


@dataclass(frozen=True, slots=True)
class NodeContact:
    """How a client reaches a node: what a redirect to it carries."""

    public: str = ""
    """``host:port`` clients connect to (the public name when bound to a wildcard address)."""
    fingerprint: str = ""
    """The SHA-256 fingerprint of the node's certificate, ``sha256:AB:...``."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    address: str
    started_at: float
    sessions: int
    rooms: int
    public: str = ""
    fingerprint: str = ""
    room_ids: tuple[str, ...] = ()
    pid: int = 0


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What the admin API and the metrics show of the cluster, from the cached view."""

    node_id: str
    """This node."""
    nodes: tuple[NodeInfo, ...]
    """The live nodes as last read (this one included once it has registered)."""
    read_at: float
    """When they were read (0: not yet)."""
    heartbeat_failures: int
    redirects: int
    """Clients this node redirected elsewhere."""
    counters: Mapping[str, int] = field(default_factory=dict)
    """This node's cluster counters (:data:`salon.daemon.cluster.node.COUNTERS`)."""


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
        contact: Callable[[], NodeContact] = NodeContact,
        pid: int = 0,
    ) -> None:
        self._redis = redis
        self.node_id = node_id
        self._address = address
        self._heartbeat_ms = heartbeat_ms
        self._load = load
        self._contact = contact
        self._pid = pid
        self._started_at = time.time()
        self.heartbeats = 0
        self.failures = 0
        self.view: list[NodeInfo] = []
        """The live nodes as last read (after each heartbeat); empty until the first read."""
        self.view_at = 0.0
        """Wall-clock time of that read (0: never)."""

    async def heartbeat(self) -> None:
        """Write this node's entry with a fresh time to live."""
        load = self._load()
        contact = self._contact()
        key = NODE_KEY.format(self.node_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "address": self._address,
                    "started_at": repr(self._started_at),
                    "sessions": load.sessions,
                    "rooms": load.rooms,
                    "room_ids": json.dumps(list(load.room_ids[:MAX_LISTED_ROOMS])),
                    "public": contact.public,
                    "fingerprint": contact.fingerprint,
                    "pid": self._pid,
                },
            )
            pipe.pexpire(key, self._heartbeat_ms * TTL_HEARTBEATS)
            pipe.sadd(NODES_KEY, self.node_id)
            await pipe.execute()
        self.heartbeats += 1

    async def refresh(self) -> list[NodeInfo]:
        """Read the registry into :attr:`view`."""
        self.view = await live_nodes(self._redis)
        self.view_at = time.time()
        return self.view

    async def run(self) -> None:
        """Heartbeat (and refresh the view) until cancelled; a Redis outage is logged and
        retried, never fatal (after a Redis restart the next heartbeat re-registers the node)."""
        while True:
            try:
                await self.heartbeat()
                await self.refresh()
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

    def snapshot(
        self, redirects: int = 0, counters: Mapping[str, int] | None = None
    ) -> ClusterSnapshot:
        return ClusterSnapshot(
            node_id=self.node_id,
            nodes=tuple(self.view),
            read_at=self.view_at,
            heartbeat_failures=self.failures,
            redirects=redirects,
            counters=dict(counters or {}),
        )


async def live_nodes(redis: Redis) -> list[NodeInfo]:
    """Every node whose entry has not expired, by id; expired ids are pruned from the set."""
    ids = sorted(_text(member) for member in await redis.smembers(NODES_KEY))
    found: list[NodeInfo] = []
    dead: list[str] = []
    # One round trip for all the entries: every node reads the registry every heartbeat.
    async with redis.pipeline(transaction=False) as pipe:
        for node_id in ids:
            pipe.hgetall(NODE_KEY.format(node_id))
        entries = await pipe.execute() if ids else []
    for node_id, entry in zip(ids, entries, strict=True):
        fields = {_text(k): _text(v) for k, v in entry.items()}
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
                    public=fields.get("public", ""),
                    fingerprint=fields.get("fingerprint", ""),
                    room_ids=_room_ids(fields.get("room_ids", "[]")),
                    pid=int(fields.get("pid", "0")),
                )
            )
        except ValueError:
            log.warning("cluster: malformed registry entry for node %r ignored", node_id)
    if dead:
        await redis.srem(NODES_KEY, *dead)
    return found


def _room_ids(text: str) -> tuple[str, ...]:
    """The ``room_ids`` field: a JSON list of strings, bounded; ValueError otherwise."""
    if len(text) > MAX_ROOM_IDS_FIELD:
        raise ValueError("room_ids too long")
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(room, str) for room in value):
        raise ValueError("room_ids is not a list of strings")
    return tuple(value[:MAX_LISTED_ROOMS])


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
