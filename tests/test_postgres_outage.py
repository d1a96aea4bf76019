"""PostgreSQL restarted under a live room, with real processes: salond on a throw-away cluster, a
speaker playing a tone and a listener hearing it (real Opus, SRTP, QUIC over loopback).

While the database is down the room's audio goes on, writes are answered ``store_unavailable``
(not ``ok``), and the console's status, the metrics and the log say so; once it is back salond
has reconnected by itself and writes succeed again.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from salon.client.connection import RequestError
from tests.conftest import InProcessDaemon, start_salond
from tests.test_reliability_support import live_room

pytestmark = pytest.mark.e2e


def salonctl_status(state: Path) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "salon.daemon.admin.ctl",
            "--socket",
            str(state / "admin.sock"),
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def metric(address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


async def code_of(call: Any) -> str:
    with pytest.raises(RequestError) as info:
        await call
    return info.value.code


async def test_postgresql_restarted_under_a_live_room(
    tmp_path: Path, postgres_cluster: Any
) -> None:
    url = postgres_cluster.database()
    config = tmp_path / "salond.toml"
    config.write_text(f'[store]\nurl = "{url}"\n\n[metrics]\nenabled = true\nport = 0\n')
    state = tmp_path / "state"
    daemon = await asyncio.to_thread(start_salond, state, "-c", str(config))
    try:
        metrics = re.search(r"metrics on http://(\S+)/metrics", daemon.log_text())
        assert metrics, daemon.log_text()
        adapter = InProcessDaemon(None, daemon.host, daemon.port, daemon.fingerprint)
        async with live_room(adapter) as room:
            owner = room.owner
            await owner.call("ban", user="guest-before", reason="stored")
            assert metric(metrics.group(1), "salon_store_available") == 1

            await asyncio.to_thread(postgres_cluster.stop)
            try:
                # The first write finds the database gone; the next is refused up front.
                assert await code_of(owner.call("ban", user="guest-during")) == "store_unavailable"
                assert await code_of(owner.call("ban", user="guest-refused")) == (
                    "store_unavailable"
                )
                # The room goes on: the listener keeps hearing the speaker.
                await room.assert_audio_flows(1.5, minimum=20)
                # Requests that store nothing still work.
                await room.listener.call("raise_hand")
                status = await asyncio.to_thread(salonctl_status, state)
                assert "store         postgresql" in status and "UNAVAILABLE" in status, status
                assert "secret" not in status
                assert metric(metrics.group(1), "salon_store_available") == 0
            finally:
                await asyncio.to_thread(postgres_cluster.start)

            # salond reconnects by itself (backoff); writes succeed again.
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                try:
                    await owner.call("ban", user="guest-after", reason="stored")
                    break
                except RequestError as exc:
                    assert exc.code == "store_unavailable"
                    assert asyncio.get_running_loop().time() < deadline, "never reconnected"
                    await asyncio.sleep(0.2)
            await room.assert_audio_flows(1.0, minimum=10)
            assert metric(metrics.group(1), "salon_store_outages_total") == 1
            assert metric(metrics.group(1), "salon_store_reconnects_total") == 1
            assert "ok" in await asyncio.to_thread(salonctl_status, state)
    finally:
        daemon.stop()
    log = daemon.log_text()
    assert "the database is unavailable" in log and "available again" in log, log

    import psycopg

    with psycopg.connect(url, connect_timeout=10) as db:
        banned = {row[0] for row in db.execute('SELECT "user" FROM bans').fetchall()}
    # Refused up front: no effect. Not acknowledged but applied in the room: written once the
    # database was back (never lost, never half-stored).
    assert banned == {"guest-before", "guest-during", "guest-after"}


def test_the_console_and_salonctl_show_an_unavailable_store() -> None:
    from salon.daemon.admin.ctl import _store_line
    from salon.daemon.admin.protocol import StoreStatus
    from salon.tui.widgets.stats import store_line

    away = StoreStatus(
        backend="postgresql",
        location="postgresql://salon:***@db/salon",
        available=False,
        last_error="connection refused",
        queued=3,
        outages=1,
    )
    assert "UNAVAILABLE (connection refused)" in store_line(away)
    assert "UNAVAILABLE (connection refused), 3 queued" in _store_line(away)
    assert "postgresql ok" in store_line(StoreStatus(backend="postgresql", location="x"))
