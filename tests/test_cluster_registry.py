"""The node registry against a real redis-server started by the test, and the ``[cluster]``
configuration (off by default)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from salon.daemon.cluster.registry import (
    NODE_KEY,
    NODES_KEY,
    TTL_HEARTBEATS,
    NodeLoad,
    NodeRegistry,
    live_nodes,
)
from salon.daemon.config import Config, ConfigError, load_config
from tests.redis_server import running_redis


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        pytest.skip("redis-server is not installed (./run test installs it)")
    with running_redis() as url:
        yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


async def test_nodes_register_with_load_and_expiring_entries(redis: Redis) -> None:
    a = NodeRegistry(redis, "a", "10.0.0.1:4433", heartbeat_ms=1000, load=lambda: NodeLoad(7, 2))
    b = NodeRegistry(redis, "b", "10.0.0.2:4433", heartbeat_ms=1000)
    await a.heartbeat()
    await b.heartbeat()
    nodes = await live_nodes(redis)
    assert [(n.node_id, n.address, n.sessions, n.rooms) for n in nodes] == [
        ("a", "10.0.0.1:4433", 7, 2),
        ("b", "10.0.0.2:4433", 0, 0),
    ]
    ttl = await redis.pttl(NODE_KEY.format("a"))
    assert 0 < ttl <= 1000 * TTL_HEARTBEATS


async def test_expired_node_is_not_listed_and_is_pruned(redis: Redis) -> None:
    a = NodeRegistry(redis, "a", "h:1", heartbeat_ms=1000)
    await a.heartbeat()
    # What expiry leaves behind: the id in the set, no entry.
    await redis.sadd(NODES_KEY, "gone")
    assert [n.node_id for n in await live_nodes(redis)] == ["a"]
    assert await redis.smembers(NODES_KEY) == {b"a"}


async def test_leave_deregisters(redis: Redis) -> None:
    a = NodeRegistry(redis, "a", "h:1", heartbeat_ms=1000)
    await a.heartbeat()
    await a.leave()
    assert await live_nodes(redis) == []


def test_cluster_is_off_by_default() -> None:
    assert Config().cluster.redis_url == ""
    assert load_config(None).cluster.redis_url == ""


def test_bad_cluster_keys_are_named(tmp_path: Path) -> None:
    conf = tmp_path / "salond.toml"
    conf.write_text('[cluster]\nredis_url = "http://x"\nnode_id = "a b"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    text = str(caught.value)
    assert "cluster.redis_url" in text and "cluster.node_id" in text
