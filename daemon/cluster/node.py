"""This salond as a cluster node: registered in Redis with its load while it runs.

Built only when ``[cluster] redis_url`` is set (docs/cluster.md). This first slice registers
the node and holds its bus codec; room leases and the media relay come next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from salon.daemon.cluster.bus import MIN_SECRET, BusCodec
from salon.daemon.cluster.registry import NodeContact, NodeLoad, NodeRegistry
from salon.daemon.config import ClusterConfig, ConfigError

log = logging.getLogger("salond.cluster")


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
    ) -> None:
        self.config = cluster
        secret = read_secret(cluster)
        self.node_id = cluster.node_id or socket.gethostname()
        # A fresh boot id per process: sequence numbers restart at 0 after a restart and must
        # not be taken for replays of the previous run's messages.
        self.codec = BusCodec(
            secret,
            f"{self.node_id}/{secrets.token_hex(4)}",
            replay_window_ms=cluster.replay_window_ms,
        )
        self._address = address
        self._load = load
        self._contact = contact
        self.redis: Redis | None = None
        self.registry: NodeRegistry | None = None
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
        log.info("cluster: node %s (pid %d) registering in Redis", self.node_id, os.getpid())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.registry is not None:
            try:
                await self.registry.leave()
            except (RedisError, OSError) as exc:
                log.warning("cluster: leaving the registry failed: %s", exc)
        if self.redis is not None:
            await self.redis.aclose()
