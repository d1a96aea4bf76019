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


# -- two salond processes as cluster nodes ----------------------------------------------------


def _node_config(
    tmp_path: Path, name: str, redis_url: str, secret: Path | None, store: str = ""
) -> Path:
    conf = tmp_path / f"{name}.toml"
    secret_line = f'secret_file = "{secret}"\n' if secret is not None else ""
    store_lines = f'[store]\nurl = "{store}"\n' if store else ""
    conf.write_text(
        f'{store_lines}[cluster]\nredis_url = "{redis_url}"\nnode_id = "{name}"\n{secret_line}'
    )
    return conf


def _salonctl_nodes(redis_url: str) -> list[dict[str, object]]:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "salon.daemon.admin.ctl", "nodes", "--redis", redis_url, "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    result: list[dict[str, object]] = json.loads(out)
    return result


def _wait_for_nodes(redis_url: str, expected: list[str]) -> list[dict[str, object]]:
    """Poll until the registry lists exactly ``expected`` (a readiness wait, not a timing check)."""
    import time

    deadline = time.monotonic() + 60
    while True:
        nodes = _salonctl_nodes(redis_url)
        if [node["node_id"] for node in nodes] == expected or time.monotonic() > deadline:
            return nodes
        time.sleep(0.2)


def test_two_salond_nodes_register_and_leave(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    from tests.conftest import start_salond

    secret = tmp_path / "cluster.secret"
    secret.write_bytes(b"k" * 48)
    a = start_salond(
        tmp_path / "a",
        "--config",
        str(_node_config(tmp_path, "a", redis_url, secret, postgres_url)),
    )
    try:
        b = start_salond(
            tmp_path / "b",
            "--config",
            str(_node_config(tmp_path, "b", redis_url, secret, postgres_url)),
        )
        try:
            nodes = _wait_for_nodes(redis_url, ["a", "b"])
            assert [(n["node_id"], n["address"]) for n in nodes] == [
                ("a", a.server),
                ("b", b.server),
            ]
            assert a.stop() == 0
            # A clean stop deregisters at once, without waiting for the entry to expire.
            assert [n["node_id"] for n in _wait_for_nodes(redis_url, ["b"])] == ["b"]
        finally:
            b.stop()
    finally:
        a.stop()


def test_cluster_without_secret_refuses_to_start(tmp_path: Path, redis_url: str) -> None:
    import subprocess
    import sys

    conf = _node_config(tmp_path, "a", redis_url, None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "salon.daemon.app",
            "--config",
            str(conf),
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "cluster.secret_file" in done.stderr


def test_cluster_refuses_sqlite(tmp_path: Path, redis_url: str) -> None:
    """Nodes share rooms, so they share the durable store: a SQLite file cannot be shared."""
    import subprocess
    import sys

    secret = tmp_path / "cluster.secret"
    secret.write_bytes(b"k" * 48)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "salon.daemon.app",
            "--config",
            str(_node_config(tmp_path, "a", redis_url, secret)),
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "store.url" in done.stderr and "PostgreSQL" in done.stderr
