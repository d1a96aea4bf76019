"""Worker processes on one machine (daemon/cluster/workers.py): two salond workers share one UDP
port, each a node in a real Redis; clients connect through the shared port; a killed worker is
restarted; SIGTERM stops them all; without Redis the configuration is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from salon.client.connection import SalonClient
from salon.daemon.admin.client import AdminClient
from salon.daemon.cluster.registry import NodeInfo, live_nodes
from salon.daemon.config import ConfigError, load_config
from tests.conftest import start_salond
from tests.redis_server import running_redis


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        pytest.skip("redis-server is not installed (./run test installs it)")
    with running_redis() as url:
        yield url


def test_workers_without_redis_are_refused_naming_key_and_file(tmp_path: Path) -> None:
    conf = tmp_path / "salond.toml"
    conf.write_text("[cluster]\nworkers = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    assert f"{conf}: cluster.workers" in str(caught.value)
    assert "cluster.redis_url" in str(caught.value)
    assert load_config(None).cluster.workers == 1


def test_workers_without_a_cluster_secret_stop_at_once(tmp_path: Path, redis_url: str) -> None:
    conf = tmp_path / "salond.toml"
    conf.write_text(f'[cluster]\nredis_url = "{redis_url}"\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "salon.daemon.app",
            "--config",
            str(conf),
            "--workers",
            "2",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cluster.secret_file" in done.stderr and "worker 1 started" not in done.stderr


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path, redis_url: str) -> None:
    """The port is taken by a socket without SO_REUSEPORT: the workers cannot bind it, and
    the supervisor stops at once instead of restarting them for ever."""
    import socket

    secret = tmp_path / "cluster.secret"
    secret.write_bytes(b"w" * 48)
    conf = tmp_path / "salond.toml"
    conf.write_text(f'[cluster]\nredis_url = "{redis_url}"\nsecret_file = "{secret}"\n')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "salon.daemon.app",
                "--config",
                str(conf),
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert "before it listened" in done.stderr and "restarting" not in done.stderr


def test_worker_log_lines_name_the_worker_and_json_stays_json() -> None:
    import json

    from salon.daemon.cluster.workers import Supervisor

    overrides = {"cluster.redis_url": "redis://127.0.0.1:1/0", "cluster.workers": 2}
    plain = Supervisor(load_config(None, overrides), [])
    assert plain._labelled(plain.workers[1], b"ready\n", b"[w2] ") == b"[w2] ready\n"
    as_json = Supervisor(load_config(None, {**overrides, "logging.json": True}), [])
    line = as_json._labelled(as_json.workers[1], b'{"message": "ready"}\n', b"[w2] ")
    assert json.loads(line) == {"message": "ready", "worker": 2}
    assert as_json._labelled(as_json.workers[0], b"Traceback\n", b"[w1] ") == b"[w1] Traceback\n"


async def _nodes_when(redis_url: str, ready: Callable[[list[NodeInfo]], bool]) -> list[NodeInfo]:
    """Poll the registry until ``ready(nodes)`` (a readiness wait, not a timing check)."""
    redis = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 60
        while True:
            nodes = await live_nodes(redis)
            if ready(nodes) or time.monotonic() > deadline:
                return nodes
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_workers_share_the_port_restart_and_stop(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    secret = tmp_path / "cluster.secret"
    secret.write_bytes(b"w" * 48)
    conf = tmp_path / "salond.toml"
    # The workers are nodes: they share the PostgreSQL store, never one SQLite file.
    conf.write_text(
        f'[store]\nurl = "{postgres_url}"\n'
        f'[cluster]\nredis_url = "{redis_url}"\nnode_id = "m"\nsecret_file = "{secret}"\n'
        "heartbeat_ms = 200\nworkers = 2\n"
    )
    supervisor = start_salond(tmp_path / "state", "--config", str(conf))
    clients: list[SalonClient] = []
    try:
        nodes = await _nodes_when(redis_url, lambda ns: [n.node_id for n in ns] == ["m-w1", "m-w2"])
        assert [n.node_id for n in nodes] == ["m-w1", "m-w2"], supervisor.log_text()
        # Both bound the one port (SO_REUSEPORT: without it the second bind fails).
        assert {n.address for n in nodes} == {f"127.0.0.1:{supervisor.port}"}
        pids = {n.node_id: n.pid for n in nodes}
        assert len(set(pids.values())) == 2 and supervisor.proc.pid not in pids.values()

        for index in range(6):
            key = base64.b64encode(hashlib.sha256(f"w{index}".encode()).digest()).decode()
            clients.append(
                await SalonClient.connect(
                    supervisor.host,
                    supervisor.port,
                    display_name=f"Guest {index}",
                    fingerprint=supervisor.fingerprint,
                    credentials={"guest_key": key},
                )
            )
        # Every connection completed its handshake and hello on one worker: none is lost.
        nodes = await _nodes_when(redis_url, lambda ns: sum(n.sessions for n in ns) == 6)
        assert sum(n.sessions for n in nodes) == 6
        for client in clients:
            await client.close()

        # Worker 1 answers on the usual admin socket and shows both nodes.
        async with await AdminClient.connect(tmp_path / "state" / "admin.sock") as admin:
            status = await admin.status()
        assert status.cluster is not None and status.cluster.node_id == "m-w1"

        os.kill(pids["m-w2"], signal.SIGKILL)
        nodes = await _nodes_when(
            redis_url,
            lambda ns: any(n.node_id == "m-w2" and n.pid not in (0, pids["m-w2"]) for n in ns),
        )
        restarted = [n.pid for n in nodes if n.node_id == "m-w2"]
        assert restarted and restarted[0] != pids["m-w2"], supervisor.log_text()
        assert "worker 2 (pid" in supervisor.log_text()

        assert supervisor.stop() == 0, supervisor.log_text()
        assert not _alive(pids["m-w1"]) and not _alive(restarted[0])
        # A clean stop deregisters every worker at once.
        assert await _nodes_when(redis_url, lambda ns: not ns) == []
    finally:
        for client in clients:
            await client.close()
        supervisor.stop()
