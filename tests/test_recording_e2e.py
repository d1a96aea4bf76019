"""Recording end to end with real processes: salond, two speaking ``salon`` clients (one
consenting, one not) and the test itself as the host who starts and stops the recording."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from salon.client.audiofile import read_audio, write_wav
from salon.daemon.wire import messages as msg
from tests.audio_checks import band_energy, tone
from tests.conftest import SalondProcess
from tests.test_e2e_audio import finish, host_client, start_cli, wait_joined

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


@pytest.mark.skip(reason="in repair: fails since the interrupted session")
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
        consented = await host.wait_for_event(
            msg.RecordingConsentChanged, timeout=20, where=lambda e: e.consent
        )
        await wait_joined(host, "Bob")
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


def json_list(text: str) -> list[str]:
    import json

    value = json.loads(text)
    assert isinstance(value, list)
    return value
