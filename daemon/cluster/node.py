"""This salond as a cluster node: registered in Redis with its load while it runs.

Built only when ``[cluster] redis_url`` is set (docs/cluster.md): registers the node, and runs
the rooms it is home of or an edge for (:mod:`.rooms`) with their leases, control bus and media
relay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from salon.daemon.cluster.bus import MIN_SECRET, BusCodec
from salon.daemon.cluster.control import ControlBus
from salon.daemon.cluster.lease import RoomLeases
from salon.daemon.cluster.registry import (
    NODE_KEY,
    TTL_HEARTBEATS,
    NodeContact,
    NodeLoad,
    NodeRegistry,
)
from salon.daemon.cluster.relay import MediaRelay, make_media_relay
from salon.daemon.cluster.tasks import cancel_and_wait
from salon.daemon.config import ClusterConfig, ConfigError

if TYPE_CHECKING:
    from salon.daemon.cluster.rooms import ClusterRooms
    from salon.daemon.core.records import RoomRecord
    from salon.daemon.net.server import SalonServer

log = logging.getLogger("salond.cluster")

COUNTERS = {
    "stale_epochs": "Control events of a deposed home dropped (their epoch was stale).",
    "uplink_refused": "Uplink datagrams refused at a home (unknown sender, or not home).",
    "fenced_writes": "Durable writes of a room this node lost, fenced off the store.",
    "control_refused": "Control messages whose seal or content was bad.",
    "relay_queue_drops": "Relayed datagrams dropped (oldest first) from the full relay queue.",
    "relay_published": "Datagrams published to the media relay.",
    "relay_delivered": "Relayed datagrams received for rooms with members here.",
    "relay_misrouted": "Relayed datagrams refused (room not followed, or channel mismatch).",
}
"""This node's cluster counters (admin API ``status``, metrics ``salon_cluster_<name>_total``);
besides them ``bus_refused.<reason>``: bus messages refused by the authenticated codec
(bad_mac: tampered or foreign, replayed, stale, malformed, own)."""


def read_secret(cluster: ClusterConfig) -> bytes:
    """The cluster secret, or a ConfigError naming the key and the file."""
    path = cluster.secret_file
    if path is None:
        raise ConfigError("cluster.secret_file: required when cluster.redis_url is set")
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"cluster.secret_file: cannot read {str(path)!r}: {exc.strerror}"
        ) from exc
    if len(secret) < MIN_SECRET:
        raise ConfigError(
            f"cluster.secret_file: {str(path)!r} holds {len(secret)} bytes, at least {MIN_SECRET}"
        )
    return secret


class ClusterNode:
    """A daemon component: joins the registry at start, heartbeats, leaves at stop."""

    def __init__(
        self,
        cluster: ClusterConfig,
        address: Callable[[], str],
        load: Callable[[], NodeLoad],
        contact: Callable[[], NodeContact] = NodeContact,
        server: SalonServer | None = None,
        load_room: Callable[[str], Awaitable[RoomRecord | None]] | None = None,
    ) -> None:
        self.config = cluster
        self._secret = secret = read_secret(cluster)
        self.node_id = cluster.node_id or socket.gethostname()
        # A fresh boot id per process: sequence numbers restart at 0 after a restart and must
        # not be taken for replays of the previous run's messages.
        boot = secrets.token_hex(4)
        self.codec = BusCodec(
            secret, f"{self.node_id}/{boot}", replay_window_ms=cluster.replay_window_ms
        )
        # Control has its own sequence space: thousands of media messages arriving first must
        # not push a control message out of the replay window.
        self.control_codec = BusCodec(
            secret, f"{self.node_id}/{boot}c", replay_window_ms=cluster.replay_window_ms
        )
        self._address = address
        self._load = load
        self._contact = contact
        self._server = server
        self._load_room = load_room
        self.redis: Redis | None = None
        self.registry: NodeRegistry | None = None
        self.rooms: ClusterRooms | None = None
        self.leases: RoomLeases | None = None
        self.relay: MediaRelay | None = None
        self.control: ControlBus | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.config.node_id:
            # The QUIC port is known only now: two nodes on one host differ by it.
            self.node_id = f"{self.node_id}:{self._address().rsplit(':', 1)[-1]}"
        self.redis = Redis.from_url(self.config.redis_url)
        self.registry = NodeRegistry(
            self.redis,
            self.node_id,
            self._address(),
            heartbeat_ms=self.config.heartbeat_ms,
            load=self._load,
            contact=self._contact,
            pid=os.getpid(),
        )
        self._task = asyncio.create_task(self.registry.run(), name="cluster-heartbeat")
        if self._server is not None and self._load_room is not None:
            await self._start_rooms(self._server, self._load_room)
        log.info("cluster: node %s (pid %d) registering in Redis", self.node_id, os.getpid())

    def counters(self, fenced_writes: int = 0) -> dict[str, int]:
        """This node's cluster counters (:data:`COUNTERS` and ``bus_refused.<reason>``)."""
        found = dict.fromkeys(COUNTERS, 0)
        found["fenced_writes"] = fenced_writes
        if self.rooms is not None:
            found["stale_epochs"] = self.rooms.guard.stale
            found["uplink_refused"] = self.rooms.uplink_refused
        if self.control is not None:
            found["control_refused"] = self.control.refused
        if self.relay is not None:
            found["relay_queue_drops"] = self.relay.outbound.dropped
            found["relay_published"] = self.relay.published
            found["relay_delivered"] = self.relay.delivered
            found["relay_misrouted"] = getattr(self.relay, "misrouted", 0)
        for codec in (self.codec, self.control_codec):
            for reason, count in codec.refused.items():
                key = f"bus_refused.{reason.value}"
                found[key] = found.get(key, 0) + count
        return found

    def may_write(self, room: str) -> bool:
        """Whether this node may write the room's durable state (the store fence)."""
        return self.rooms is None or self.rooms.may_write(room)

    async def _start_rooms(
        self, server: SalonServer, load_room: Callable[[str], Awaitable[RoomRecord | None]]
    ) -> None:
        from salon.daemon.cluster.rooms import ClusterRooms

        assert self.redis is not None
        # Late-bound callbacks: the rooms need the relay, the relay and bus deliver to the rooms.
        self.leases = RoomLeases(
            self.redis,
            self.node_id,
            lease_ms=self.config.lease_ms,
            on_lost=lambda room: self.rooms.lease_lost(room) if self.rooms else None,
            on_regained=lambda room: self.rooms.lease_regained(room) if self.rooms else None,
        )
        # The udp relay listens on the QUIC socket's host and tells other nodes the public
        # name when that host is a wildcard (the address clients are redirected to).
        bind_host = self._address().rsplit(":", 1)[0].strip("[]")
        public_host = (self._contact().public or self._address()).rsplit(":", 1)[0].strip("[]")
        self.relay = make_media_relay(
            self.config.relay_transport,
            self.redis,
            self.codec,
            lambda room, data: self.rooms.on_media(room, data) if self.rooms else None,
            queue_limit=self.config.relay_queue,
            host=bind_host,
            port=self.config.relay_port,
            advertise_host=public_host,
            tick_ms=self.config.relay_tick_ms,
        )
        self.control = ControlBus(
            self.redis,
            self.control_codec,
            self._secret,
            self.node_id,
            lambda message: self.rooms.on_control(message) if self.rooms else None,
        )
        redis = self.redis

        async def node_boot(node: str) -> float | None:
            started = await redis.hget(NODE_KEY.format(node), "started_at")
            try:
                return float(started) if started is not None else None
            except ValueError:
                return 0.0  # a malformed entry is still a living node's

        self.rooms = ClusterRooms(
            server,
            self.node_id,
            self.leases,
            self.relay,
            self.control,
            load_room,
            node_boot,
            # An edge's entry missing for its whole time to live is dead, not re-registering.
            edge_grace=self.config.heartbeat_ms * TTL_HEARTBEATS / 1000,
        )
        await self.relay.start()
        await self.control.start()
        self.leases.start()
        self.rooms.start()

    async def stop(self) -> None:
        if self.rooms is not None:
            await self.rooms.stop()
        if self.leases is not None:
            await self.leases.stop()
        if self.control is not None:
            await self.control.stop()
        if self.relay is not None:
            await self.relay.stop()
        await cancel_and_wait([self._task])
        if self.registry is not None:
            try:
                await self.registry.leave()
            except (RedisError, OSError) as exc:
                log.warning("cluster: leaving the registry failed: %s", exc)
        if self.redis is not None:
            await self.redis.aclose()
