"""End to end with separate processes: salond, a speaking `salon`, a recording `salon`.

The test process itself is a third client (the room's host). Audio is real: espeak-ng speech
and tones, Opus, SRTP, QUIC datagrams over loopback.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import numpy as np
import pytest

from salon.client.audiofile import read_audio, write_wav
from salon.client.connection import SalonClient
from salon.daemon.wire import messages as msg
from tests.audio_checks import (
    band_energy,
    median_correlation,
    median_envelope,
    piecewise,
    speech,
    tone,
)
from tests.conftest import SalondProcess, salon_cli

pytestmark = pytest.mark.e2e
HOST_KEY = "aG9zdC1rZXktZm9yLWUyZS10ZXN0cy0xMjM0NTY="


async def host_client(daemon: SalondProcess, name: str = "Host") -> SalonClient:
    return await SalonClient.connect(
        daemon.host,
        daemon.port,
        display_name=name,
        fingerprint=daemon.fingerprint,
        credentials={"guest_key": "aG9zdC1rZXktZm9yLWUyZS10ZXN0cy0xMjM0NTY="},
    )


def start_cli(daemon: SalondProcess, tmp: Path, name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        salon_cli(
            daemon,
            *args,
            "--name",
            name,
            "--guest-key-file",
            str(tmp / f"{name}.key"),
            "--quiet",
            "--no-input",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


async def wait_joined(host: SalonClient, display_name: str) -> msg.Participant:
    event = await host.wait_for_event(
        msg.ParticipantJoined,
        timeout=20,
        where=lambda e: e.participant.display_name == display_name,
    )
    return event.participant


async def wait_left(host: SalonClient, user: str) -> None:
    await host.wait_for_event(msg.ParticipantLeft, timeout=20, where=lambda e: e.user == user)


async def wait_datagrams(client: SalonClient, count: int, timeout: float = 30.0) -> None:
    """Until ``count`` more media datagrams reached ``client``."""
    target = client.datagrams_received + count
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while client.datagrams_received < target:
        assert loop.time() < deadline, f"{client.datagrams_received} of {target} datagrams"
        await asyncio.sleep(0.05)


async def stop_recording(listener: subprocess.Popen[str]) -> None:
    """End a recording ``salon join``: SIGTERM makes it leave and close its file whole.

    Its jitter buffer still holds up to a few hundred ms of audio when the speaker leaves; a
    second more of (silent) recording keeps that in the file.
    """
    await asyncio.sleep(1.0)
    listener.terminate()
    finish(listener)


async def test_speech_reaches_listener_intact(salond, tmp_path):
    source_path = speech(
        "Salon carries real speech from one process to another. "
        "The quick brown fox jumps over the lazy dog.",
        tmp_path / "speech.wav",
    )
    host = await host_client(salond)
    try:
        await host.create_room("End to end", room="e2e")
        await host.join("e2e")
        invite = (await host.call("create_invite", role="speaker"))["invite"]["token"]
        # The listener records until told to stop, however long the speaker takes to start.
        listener = start_cli(
            salond, tmp_path, "Listener", "join", "e2e", "--record", str(tmp_path / "heard.wav")
        )
        await wait_joined(host, "Listener")
        speaker = start_cli(
            salond,
            tmp_path,
            "Speaker",
            "join",
            "e2e",
            f"--invite={invite}",
            "--play",
            str(source_path),
        )
        joined = await wait_joined(host, "Speaker")
        finish(speaker)
        await wait_left(host, joined.user)
        await stop_recording(listener)
    finally:
        await host.close()
    source = read_audio(source_path)
    heard = read_audio(tmp_path / "heard.wav")
    # Each second of the speech is looked for on its own: on a loaded machine the listener's
    # playout conceals late frames and skips ahead when its process stalls, which shifts all
    # that follows, and one alignment of the whole phrase then fails although every word came.
    pieces = piecewise(source, heard)
    # Opus at 32 kbit/s keeps speech's waveform closely: a median of 0.95-0.97 per second on a
    # quiet machine, 0.88-0.95 with two busy loops on the two cores (the worst second 0.52);
    # other speech scores near 0 (0.14-0.17), which the control below shows.
    assert median_correlation(pieces) > 0.5, pieces
    assert median_envelope(pieces) > 0.85, pieces
    other = read_audio(
        speech("Something else entirely, said at another pace.", tmp_path / "other.wav")
    )
    control = piecewise(other, heard)
    assert median_correlation(control) < 0.25, control
    # The speech arrived whole and in order: every second of it is found after the one before.
    lags = [piece.lag for piece in pieces]
    assert lags == sorted(set(lags)), pieces


async def test_moderator_mute_stops_audio_and_outsider_hears_nothing(salond, tmp_path):
    write_wav(tmp_path / "tone.wav", tone([440.0], 60.0))
    host = await host_client(salond)
    outsider = await SalonClient.connect(
        salond.host, salond.port, display_name="Outsider", fingerprint=salond.fingerprint
    )
    try:
        await host.create_room("Mute test", room="mute")
        await host.join("mute")
        await outsider.create_room("Elsewhere", room="elsewhere")
        await outsider.join("elsewhere")
        invite = (await host.call("create_invite", role="speaker"))["invite"]["token"]
        listener = start_cli(
            salond, tmp_path, "Listener", "join", "mute", "--record", str(tmp_path / "heard.wav")
        )
        await wait_joined(host, "Listener")
        speaker = start_cli(
            salond,
            tmp_path,
            "Speaker",
            "join",
            "mute",
            f"--invite={invite}",
            "--play",
            str(tmp_path / "tone.wav"),
        )
        joined = await wait_joined(host, "Speaker")
        # Mute once the tone has been forwarded for 2 s (the host hears it too), not after a
        # guess at how long the speaker's process takes to start.
        await wait_datagrams(host, 100)
        await host.call("mute", user=joined.user)
        # Then let the listener record silence: 3 s of it.
        await asyncio.sleep(3.0)
        await stop_recording(listener)
        speaker.terminate()
        speaker.communicate(timeout=10)
        assert outsider.datagrams_received == 0
    finally:
        await host.close()
        await outsider.close()
    heard = read_audio(tmp_path / "heard.wav").astype(np.float64)
    rms = [float(np.sqrt((heard[i : i + 24000] ** 2).mean())) for i in range(0, len(heard), 24000)]
    loud = [value > 1000 for value in rms]
    assert any(loud), rms
    first_loud = loud.index(True)
    last_loud = len(loud) - 1 - loud[::-1].index(True)
    # Tone heard for a while, then silence after the mute until the end of the recording.
    assert last_loud - first_loud >= 3, rms
    assert not any(loud[last_loud + 2 :]) and len(loud) - last_loud > 4, rms
    assert band_energy(heard[first_loud * 24000 : (last_loud + 1) * 24000], 440.0) > 0.8


async def test_approval_knock_is_approved_by_host_in_another_process(salond, tmp_path):
    host = await host_client(salond)
    try:
        await host.create_room("Approval", room="knock", policy="approval")
        await host.join("knock")
        visitor = start_cli(salond, tmp_path, "Visitor", "join", "knock", "--duration", "2")
        knock = await host.wait_for_event(msg.Knock, timeout=20)
        assert knock.request.display_name == "Visitor"
        assert knock.request.user.startswith("guest-")
        await host.call("approve_knock", request_id=knock.request.request_id)
        await wait_joined(host, "Visitor")
        out = finish(visitor)
        assert "joined knock" in out
    finally:
        await host.close()


async def test_invite_link_admits_with_its_role(salond, tmp_path):
    host = await host_client(salond)
    try:
        await host.create_room("Invite only", room="vip", policy="invite")
        await host.join("vip")
        stranger = start_cli(salond, tmp_path, "Stranger", "join", "vip", "--duration", "1")
        out, _ = stranger.communicate(timeout=30)
        assert stranger.returncode == 1 and "invite_required" in out
        token = (await host.call("create_invite", role="speaker", max_uses=1))["invite"]["token"]
        guest = start_cli(
            salond, tmp_path, "Guest", "join", "vip", f"--invite={token}", "--duration", "2"
        )
        participant = await wait_joined(host, "Guest")
        assert participant.role == "speaker"
        finish(guest)
    finally:
        await host.close()
