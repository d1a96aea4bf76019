"""Recording end to end with real processes: salond, two speaking ``salon`` clients (one
consenting, one not) and the test itself as the host who starts and stops the recording."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from salon.client.audiofile import read_audio, write_wav
from salon.client.connection import SalonClient
from salon.daemon.wire import messages as msg
from tests.audio_checks import band_energy, tone
from tests.conftest import SalondProcess
from tests.test_e2e_audio import finish, host_client, start_cli

pytestmark = pytest.mark.e2e


def wait_indexed(daemon: SalondProcess, recording: str, timeout: float = 20.0) -> dict[str, Any]:
    """The recording's row in the daemon's database, once it is complete."""
    deadline = time.monotonic() + timeout
    database = daemon.state_dir / "salon.db"
    while time.monotonic() < deadline:
        if database.exists():
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                db.row_factory = sqlite3.Row
                try:
                    row = db.execute(
                        "SELECT * FROM recordings WHERE id = ?", (recording,)
                    ).fetchone()
                except sqlite3.OperationalError:
                    row = None
            if row is not None and row["status"] != "recording":
                return dict(row)
        time.sleep(0.2)
    raise AssertionError(f"recording {recording} not indexed:\n{daemon.log_text()}")


def opusinfo(path: Path) -> str:
    done = subprocess.run(["opusinfo", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done.stdout


def decode(path: Path, out: Path) -> np.ndarray:
    subprocess.run(["opusdec", "--quiet", str(path), str(out)], check=True, timeout=30)
    return read_audio(out)


async def test_only_the_consenting_speaker_is_recorded(salond, tmp_path):
    write_wav(tmp_path / "a440.wav", tone([440.0], 4.0))
    write_wav(tmp_path / "b1000.wav", tone([1000.0], 4.0))
    host = await host_client(salond)
    try:
        await host.create_room("Recorded", room="rec")
        await host.join("rec")
        invite = (await host.call("create_invite", role="speaker"))["invite"]["token"]
        before_start = time.time()
        recording = (await host.call("start_recording"))["recording"]
        await host.wait_for_event(msg.RecordingStarted, timeout=10)
        # The host is on stage too: it declines, so only Alice is in the recording.
        await host.call("recording_consent", consent=False)
        alice = start_cli(
            salond, tmp_path, "Alice", "join", "rec", f"--invite={invite}",
            "--play", str(tmp_path / "a440.wav"), "--consent",
        )  # fmt: skip
        bob = start_cli(
            salond, tmp_path, "Bob", "join", "rec", f"--invite={invite}",
            "--play", str(tmp_path / "b1000.wav"), "--no-consent",
        )  # fmt: skip
        # Alice's consent and Bob's arrival come in either order: wait_for_event skips
        # what it is not waiting for, so both are awaited from one stream of events.
        seen = await wait_for_all(
            host,
            consent=lambda e: isinstance(e, msg.RecordingConsentChanged) and e.consent,
            bob=lambda e: (
                isinstance(e, msg.ParticipantJoined) and e.participant.display_name == "Bob"
            ),
        )
        consented = seen["consent"]
        out_alice = await asyncio.to_thread(finish, alice)
        out_bob = await asyncio.to_thread(finish, bob)
        await host.call("stop_recording")
        after_stop = time.time()
        stopped = await host.wait_for_event(msg.RecordingStopped, timeout=10)
    finally:
        await host.close()
    assert stopped.recording == recording and stopped.reason == "stopped"
    assert "recorded" in out_alice and "you are recorded" in out_alice, out_alice
    assert "you are recorded" not in out_bob, out_bob

    row = wait_indexed(salond, recording)
    assert row["status"] == "complete" and row["room"] == "rec"
    assert json_list(row["speakers"]) == [consented.user]
    assert before_start <= row["started_at"] < row["ended_at"] <= after_stop
    path = Path(row["path"])
    assert path.parent == salond.state_dir / "recordings"

    info = opusinfo(path)
    assert "Playback length" in info
    print("\n".join(line for line in info.splitlines() if "length" in line or "bitrate" in line))
    audio = decode(path, tmp_path / "decoded.wav")
    expected = row["ended_at"] - row["started_at"]
    # The file lasts exactly as long as the recording ran (to the 20 ms frame).
    assert abs(len(audio) / 48000 - expected) <= 0.021, (len(audio) / 48000, expected)
    assert abs(row["duration"] - len(audio) / 48000) < 0.001

    voiced = audio[np.abs(audio.astype(np.int32)) > 300]
    assert len(voiced) > 48000 * 3, "Alice's four seconds are in the file"
    alice_band, bob_band = band_energy(audio, 440.0), band_energy(audio, 1000.0)
    print(f"band energy 440 Hz {alice_band:.4f}, 1000 Hz {bob_band:.6f}")
    assert alice_band > 0.8, alice_band
    assert bob_band < 0.002, bob_band


async def wait_for_all(
    client: SalonClient, timeout: float = 20.0, **wanted: Callable[[Any], bool]
) -> dict[str, Any]:
    """The first event matching each predicate, whatever order they come in."""
    found: dict[str, Any] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(found) < len(wanted):
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"never saw {sorted(set(wanted) - set(found))}")
        event = await client.next_event(remaining)
        assert event is not None, "the host's connection closed"
        for name, matches in wanted.items():
            if name not in found and matches(event):
                found[name] = event
    return found


def json_list(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list)
    return value


def salonctl(daemon: SalondProcess, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "salon.daemon.admin.ctl", "--socket",
         str(daemon.state_dir / "admin.sock"), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_an_operator_records_lists_and_downloads_with_salonctl(salond, tmp_path):
    write_wav(tmp_path / "a440.wav", tone([440.0], 2.0))
    host = await host_client(salond)
    try:
        await host.create_room("Recorded", room="ops")
        await host.join("ops")
        invite = (await host.call("create_invite", role="speaker"))["invite"]["token"]
        out = await asyncio.to_thread(salonctl, salond, "record", "ops")
        recording = out.split(": ")[-1].strip()
        started = await host.wait_for_event(msg.RecordingStarted, timeout=10)
        assert started.recording == recording and started.by.startswith("operator:")
        alice = start_cli(
            salond, tmp_path, "Alice", "join", "ops", f"--invite={invite}",
            "--play", str(tmp_path / "a440.wav"), "--consent",
        )  # fmt: skip
        await asyncio.to_thread(finish, alice)
        out = await asyncio.to_thread(salonctl, salond, "stop-recording", "ops")
        assert out == f"stopped recording {recording} of ops\n"
        await host.wait_for_event(msg.RecordingStopped, timeout=10)
    finally:
        await host.close()
    row = wait_indexed(salond, recording)
    listed = json.loads(await asyncio.to_thread(salonctl, salond, "--json", "recordings"))
    assert [r["id"] for r in listed] == [recording]
    [entry] = listed
    assert entry["status"] == "complete" and entry["room"] == "ops"
    assert entry["path"] == row["path"] and entry["duration"] == row["duration"]
    assert len(entry["speakers"]) == 1
    text = await asyncio.to_thread(salonctl, salond, "recordings", "--room", "ops")
    assert recording in text and row["path"] in text
    copy = tmp_path / "copy.opus"
    await asyncio.to_thread(salonctl, salond, "recordings", recording, "--output", str(copy))
    assert copy.read_bytes() == Path(row["path"]).read_bytes()
    opusinfo(copy)
    audio = decode(copy, tmp_path / "copy.wav")
    assert band_energy(audio, 440.0) > 0.8
