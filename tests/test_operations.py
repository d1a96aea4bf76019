"""An operator's day: the systemd unit, private state, tokens kept off the command line, an
online backup, the health endpoint and log lines for collectors; over real salond processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from salon.client.connection import RequestError, SalonClient
from salon.daemon.admin.client import AdminClient
from salon.daemon.metrics import MetricsEndpoint
from salon.daemon.store import DATABASE_NAME
from tests.conftest import SalondProcess, run_daemon, salon_cli, start_salond
from tests.test_abuse_limits import fresh_key, salonctl
from tests.test_reliability_support import record

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "conf" / "salond.service"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def stop(daemon: SalondProcess) -> None:
    code = daemon.stop()
    assert code == 0, f"salond exited with {code}:\n{daemon.log_text()}"


# --------------------------------------------------------------------------- systemd


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (./run test installs the systemd package)")
    salond = shutil.which("salond") or str(Path(sys.executable).parent / "salond")
    assert os.access(salond, os.X_OK), "salond is not installed next to this Python"
    # verify checks that ExecStart is executable: point it at this installation's salond.
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/usr/local/bin/salond " in text
    for option in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert f"\n{option}\n" in text
    unit = tmp_path / "salond.service"
    unit.write_text(text.replace("/usr/local/bin/salond", salond), encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    output = (done.stdout + done.stderr).strip()
    # Unknown or misspelt keys are only warnings (exit 0): any line naming the unit fails.
    problems = [line for line in output.splitlines() if "salond.service" in line]
    assert done.returncode == 0 and not problems, output


# --------------------------------------------------------------------------- secrets at rest


async def test_state_is_private_and_logs_are_json_lines(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "salond.toml"
    config.write_text("[logging]\njson = true\n")
    daemon = start_salond(state, "-c", str(config))
    try:
        client = await SalonClient.connect(
            daemon.host,
            daemon.port,
            display_name="Visitor",
            fingerprint=daemon.fingerprint,
            credentials=fresh_key("modes"),
        )
        await client.create_room("Private", room="private", persistent=True)
        await client.close()
        assert mode(state) == 0o700
        for name in (DATABASE_NAME, f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm"):
            assert mode(state / name) == 0o600, name
        assert mode(state / "admin.sock") == 0o600
        assert mode(state / "tls") == 0o700
    finally:
        stop(daemon)
    records = [json.loads(line) for line in daemon.lines if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    messages = [r["message"] for r in records]
    assert any(m.startswith("connected: session 1 guest-") for m in messages)
    assert any(m.startswith("disconnected: session 1 guest-") for m in messages)

    # Looser modes left by an older salond or a careless copy are tightened at start.
    recordings = state / "recordings"
    recordings.mkdir(exist_ok=True)
    (recordings / "old.opus").write_bytes(b"OggS")
    for path, loose in [
        (state, 0o755),
        (state / DATABASE_NAME, 0o644),
        (recordings, 0o755),
        (recordings / "old.opus", 0o644),
    ]:
        os.chmod(path, loose)
    daemon = start_salond(state)
    try:
        assert mode(state) == 0o700
        assert mode(state / DATABASE_NAME) == 0o600
        assert mode(recordings) == 0o700
        assert mode(recordings / "old.opus") == 0o600
        assert f"made {recordings / 'old.opus'} private (was 644)" in daemon.log_text()
    finally:
        stop(daemon)


def test_recordings_are_created_private_whatever_the_umask(tmp_path: Path) -> None:
    from salon.daemon.recording.recorder import RoomRecorder

    previous = os.umask(0o022)
    try:
        recorder = RoomRecorder(tmp_path / "r.opus", time.time())
        recorder.finish(time.time())
    finally:
        os.umask(previous)
    assert mode(tmp_path / "r.opus") == 0o600


# --------------------------------------------------------------------------- tokens


def test_tokens_from_a_file_or_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "salond.toml"
    config.write_text('[auth]\nallow_guests = false\n[auth.tokens]\n"secret-of-dana" = "dana"\n')
    daemon = start_salond(tmp_path / "state", "-c", str(config))
    try:
        token_file = tmp_path / "token"
        token_file.write_text("secret-of-dana\n")
        env = {k: v for k, v in os.environ.items() if k != "SALON_TOKEN"}

        def salon(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                salon_cli(daemon, "rooms", *args),
                capture_output=True,
                text=True,
                timeout=60,
                env={**env, **extra},
            )

        refused = salon()
        assert refused.returncode != 0 and "auth_failed" in refused.stderr + refused.stdout
        by_file = salon("--token-file", str(token_file))
        assert by_file.returncode == 0, by_file.stderr
        by_env = salon(SALON_TOKEN="secret-of-dana")
        assert by_env.returncode == 0, by_env.stderr
        missing = salon("--token-file", str(tmp_path / "nope"))
        assert missing.returncode != 0 and "cannot read the token file" in missing.stderr
    finally:
        stop(daemon)


# --------------------------------------------------------------------------- backup


def read_db(path: Path, query: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


async def test_a_backup_during_a_burst_of_bans_restores_every_acknowledged_ban(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "salond.toml"
    config.write_text("[limits]\nmessage_rate = 100000.0\nmessage_burst = 100000\n")
    daemon = start_salond(state, "-c", str(config))
    backup = tmp_path / "backups" / "salon-backup.db"
    backup.parent.mkdir()
    burst = 400
    acked: set[str] = set()
    try:
        owner = await SalonClient.connect(
            daemon.host,
            daemon.port,
            display_name="Owner",
            fingerprint=daemon.fingerprint,
            credentials=fresh_key("backup-owner"),
        )
        await owner.create_room("Busy", room="busy", persistent=True)
        await owner.join("busy")

        def ban(user: str) -> asyncio.Future[Any]:
            future = asyncio.ensure_future(owner.call("ban", user=user, reason="burst"))
            future.add_done_callback(
                lambda f: acked.add(user) if not f.cancelled() and not f.exception() else None
            )
            return future

        futures = [ban(f"guest-burst{index:05d}") for index in range(burst)]
        while len(acked) < burst // 4:
            await asyncio.sleep(0.001)
        before_backup = set(acked)
        # Through the admin socket directly (salonctl backup below): no process start-up
        # between the snapshot of acknowledgements and the backup.
        admin = await AdminClient.connect(state / "admin.sock")
        try:
            result = await admin.request("backup", path=str(backup))
        finally:
            await admin.close()
        during = len(acked)
        assert result["integrity"] == "ok"
        await asyncio.gather(*futures)
        await owner.close()
        # salonctl: a second backup to the same name is refused; a new name is written.
        code, _, err = await salonctl(state / "admin.sock", "backup", str(backup))
        assert code != 0 and "exists" in err
        code, out, err = await salonctl(state / "admin.sock", "backup", str(backup) + ".2")
        assert code == 0 and "integrity ok" in out, err
    finally:
        stop(daemon)
    assert during < burst, "the backup did not run inside the burst"
    assert mode(backup) == 0o600
    assert not Path(f"{backup}-wal").exists()  # a self-contained file

    # Restore as documented in UPGRADING.md: the backup becomes state_dir/salon.db.
    restored = tmp_path / "restored"
    restored.mkdir(mode=0o700)
    shutil.copyfile(backup, restored / DATABASE_NAME)
    daemon = start_salond(restored)
    try:
        banned = {
            row[0]
            for row in read_db(restored / DATABASE_NAME, "SELECT user FROM bans WHERE room='busy'")
        }
        assert before_backup <= banned, f"{len(before_backup - banned)} acknowledged bans lost"
        record(
            "backup_during_ban_burst",
            burst=burst,
            acked_before_backup=len(before_backup),
            acked_when_backup_returned=during,
            restored_bans=len(banned),
            backup_bytes=backup.stat().st_size,
        )
        # The restored room enforces them.
        owner = await SalonClient.connect(
            daemon.host,
            daemon.port,
            display_name="Owner",
            fingerprint=daemon.fingerprint,
            credentials=fresh_key("backup-owner"),
        )
        assert (await owner.join("busy"))["role"] == "owner"
        await owner.call("unban", user=sorted(before_backup)[0])
        with pytest.raises(RequestError):
            await owner.call("unban", user="guest-never-banned")
        await owner.close()
    finally:
        stop(daemon)


# --------------------------------------------------------------------------- health


async def test_health_endpoint(tmp_path: Path) -> None:
    from tests.test_metrics import scrape

    overrides = {"metrics.enabled": True, "metrics.port": 0}
    async with run_daemon(tmp_path / "state", **overrides) as live:
        [endpoint] = [c for c in live.daemon.components if isinstance(c, MetricsEndpoint)]
        host, port = endpoint.address
        await live.client("Someone")
        status, body = await scrape(host, port, "/healthz")
        assert status == "HTTP/1.1 200 OK"
        assert json.loads(body) == {"status": "serving", "sessions": 1, "rooms": 0}
        # While salond drains for a stop, load balancers are told to go elsewhere.
        live.daemon.server.shutting_down = True
        try:
            status, body = await scrape(host, port, "/healthz")
        finally:
            live.daemon.server.shutting_down = False
        assert status == "HTTP/1.1 503 Service Unavailable"
        assert json.loads(body)["status"] == "stopping"


async def test_a_task_that_will_not_end_does_not_keep_salond_from_stopping(tmp_path, monkeypatch):
    """A companion task (like the demo bot) that swallows its cancellation is left behind after
    TASK_STOP_TIMEOUT instead of hanging the stop (seen: salond --demo killed 15 s after
    SIGTERM)."""
    from salon.daemon import app
    from tests.conftest import run_daemon

    monkeypatch.setattr(app, "TASK_STOP_TIMEOUT", 0.2)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # refuses to end while salond stops

    task = asyncio.ensure_future(stubborn())
    async with run_daemon(tmp_path / "state") as live:
        live.daemon._tasks.append(task)
    # run_daemon's exit awaited daemon.stop(): reaching this line means the stop returned.
    assert live.daemon.stopped.is_set()
    assert not task.done()
    release.set()
    await task
