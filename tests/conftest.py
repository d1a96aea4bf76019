"""Shared fixtures: a real salond (in-process or as its own process) and real clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from salon.client.connection import SalonClient
from salon.daemon.config import load_config, resolve_paths

LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")
FINGERPRINT_RE = re.compile(r"fingerprint (sha256:[0-9A-F:]+)")


@dataclass
class SalondProcess:
    """A salond started as its own process by a test."""

    proc: subprocess.Popen[str]
    state_dir: Path
    lines: list[str] = field(default_factory=list)
    host: str = ""
    port: int = 0
    fingerprint: str = ""

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def log_text(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_salond(
    state_dir: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 20.0
) -> SalondProcess:
    """Start ``salond`` on a free port and wait until it listens."""
    command = [
        sys.executable,
        "-m",
        "salon.daemon.app",
        "--port",
        "0",
        "--state-dir",
        str(state_dir),
        "--log-level",
        "info",
        *extra,
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
    )
    daemon = SalondProcess(proc=proc, state_dir=state_dir)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            daemon.lines.append(line)
            if match := LISTEN_RE.search(line):
                daemon.host, daemon.port = match.group(1), int(match.group(2))
            if match := FINGERPRINT_RE.search(line):
                daemon.fingerprint = match.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or not daemon.port or not daemon.fingerprint:
        daemon.stop()
        raise RuntimeError("salond did not start:\n" + daemon.log_text())
    return daemon


@pytest.fixture
def salond(tmp_path: Path) -> Iterator[SalondProcess]:
    daemon = start_salond(tmp_path / "state")
    yield daemon
    code = daemon.stop()
    assert code == 0, f"salond exited with {code}:\n{daemon.log_text()}"


def salon_cli(daemon: SalondProcess, *args: str) -> list[str]:
    """The command line of the ``salon`` client against ``daemon``."""
    return [
        sys.executable,
        "-m",
        "salon.client.cli",
        *args,
        "--server",
        daemon.server,
        "--fingerprint",
        daemon.fingerprint,
    ]


@dataclass
class InProcessDaemon:
    """salond running in the test's own event loop (real QUIC over loopback)."""

    daemon: Any
    host: str
    port: int
    fingerprint: str
    clients: list[SalonClient] = field(default_factory=list)
    state_dir: Path = Path()

    async def client(self, name: str = "Tester", **kwargs: Any) -> SalonClient:
        if "credentials" not in kwargs:
            kwargs["credentials"] = {"guest_key": _guest_key(name, len(self.clients))}
        client = await SalonClient.connect(
            self.host, self.port, display_name=name, fingerprint=self.fingerprint, **kwargs
        )
        self.clients.append(client)
        return client


def _guest_key(name: str, index: int) -> str:
    import base64
    import hashlib

    return base64.b64encode(
        hashlib.sha256(f"{name}/{index}/{time.time()}".encode()).digest()
    ).decode()


LOOPBACK_GUEST_LIMITS = {
    "limits.guest_connections_per_address": 100_000,
    "limits.guest_connect_rate": 0.0,
    "limits.guest_rooms_per_address": 100_000,
    "limits.guest_create_rate": 0.0,
}
"""Every test client comes from 127.0.0.1: the in-process daemons lift the per-address guest
limits unless a test sets them (tests/test_abuse_limits.py does, with its own values)."""


@contextlib.asynccontextmanager
async def run_daemon(state_dir: Path, **overrides: Any) -> AsyncIterator[InProcessDaemon]:
    from salon.daemon.app import Daemon

    values = {
        "server.port": 0,
        "server.state_dir": str(state_dir),
        **LOOPBACK_GUEST_LIMITS,
        **overrides,
    }
    config = resolve_paths(load_config(None, values))
    daemon = Daemon(config)
    await daemon.start()
    host, port = daemon.server.address
    running = InProcessDaemon(daemon, host, port, daemon.tls.fingerprint, state_dir=state_dir)
    try:
        yield running
    finally:
        for client in running.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 3)
        await daemon.stop()


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[InProcessDaemon]:
    async with run_daemon(tmp_path / "state") as running:
        yield running


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Any]:
    """One throw-away PostgreSQL server per test worker (tests/pg_cluster.py); skipped where
    PostgreSQL is not installed, except in CI (``./run test`` installs it there)."""
    from tests.pg_cluster import running_cluster

    with running_cluster() as cluster:
        if cluster is None:
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL is not installed (./run test installs it)")
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: Any) -> str:
    """The URL of a new empty database on the test cluster."""
    return str(postgres_cluster.database())
