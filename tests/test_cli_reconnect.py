"""`salon join` survives a daemon restart: separate processes, real audio.

salond runs as its own process; `salon create --persistent` opens a room that outlives the
daemon, a `salon join --record` listener and a `salon join --play` speaker (with a speaker
invite) sit in it. salond is stopped (clients get `server_shutdown`) and started again on the
same port and state directory. Both clients must say the connection was lost, come back on their
own and rejoin; the listener's recording goes on through the gap and has the speaker's tone
again in its last part. With `--no-reconnect` the listener ends instead.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from salon.client.audiofile import read_audio, write_wav
from salon.client.connection import SalonClient
from salon.daemon.wire import messages as msg
from tests.audio_checks import RATE, band_energy, tone
from tests.conftest import SalondProcess, salon_cli, start_salond
from tests.test_reconnect import free_udp_port
from tests.test_reliability_support import record

pytestmark = pytest.mark.e2e

LISTEN_SECONDS = 30.0
BACK_RE = re.compile(r"back in (\S+) \(after ([0-9.]+) s\)")


@dataclass
class Cli:
    """A running `salon` process whose output is collected line by line."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None and not any(text in x for x in self.lines):
                time.sleep(0.2)  # the pump may still be reading the last lines
                if not any(text in x for x in self.lines):
                    break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} from salon:\n{self.output()}")

    def finish(self, timeout: float = 90.0) -> int:
        self.proc.wait(timeout)
        return self.proc.returncode


def run_cli(daemon: SalondProcess, tmp: Path, name: str, *args: str) -> Cli:
    proc = subprocess.Popen(
        salon_cli(
            daemon,
            *args,
            "--name",
            name,
            "--guest-key-file",
            str(tmp / f"{name}.key"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cli = Cli(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            cli.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return cli


def run_once(daemon: SalondProcess, tmp: Path, name: str, *args: str) -> str:
    cli = run_cli(daemon, tmp, name, *args)
    assert cli.finish(30) == 0, cli.output()
    time.sleep(0.1)
    return cli.output()


def loudness(samples: np.ndarray, window: int = RATE // 2) -> list[float]:
    values = samples.astype(np.float64)
    return [
        float(np.sqrt((values[i : i + window] ** 2).mean()))
        for i in range(0, len(values) - window + 1, window)
    ]


def test_join_reconnects_after_a_daemon_restart_and_keeps_recording(tmp_path):
    state = tmp_path / "state"
    port = free_udp_port()
    where = ("--host", "127.0.0.1", "--port", str(port))
    write_wav(tmp_path / "tone.wav", tone([440.0], 90.0))
    heard_path = tmp_path / "heard.wav"
    first = start_salond(state, *where)
    second: SalondProcess | None = None
    clients: list[Cli] = []
    try:
        run_once(first, tmp_path, "Host", "create", "lasting", "--title", "Lasting", "--persistent")
        invite = run_once(first, tmp_path, "Host", "invite", "lasting", "--role", "speaker")
        token = invite.strip().splitlines()[-1]
        common = ("--quiet", "--no-input")
        listener = run_cli(
            first,
            tmp_path,
            "Listener",
            "join",
            "lasting",
            "--record",
            str(heard_path),
            "--duration",
            str(LISTEN_SECONDS),
            *common,
        )
        clients.append(listener)
        listener.wait_for("joined lasting")
        speaker = run_cli(
            first,
            tmp_path,
            "Speaker",
            "join",
            "lasting",
            f"--invite={token}",
            "--play",
            str(tmp_path / "tone.wav"),
            "--duration",
            "90",
            *common,
        )
        clients.append(speaker)
        speaker.wait_for("joined lasting")
        time.sleep(2.0)  # some tone before the restart
        assert first.stop() == 0, first.log_text()
        for cli in clients:
            cli.wait_for("server shutting down", 15)
            cli.wait_for("connection lost", 15)
        assert listener.proc.poll() is None, listener.output()
        second = start_salond(state, *where)
        assert second.fingerprint == first.fingerprint  # the pin still holds
        back = {
            name: cli.wait_for("back in lasting", 45)
            for name, cli in zip(("listener", "speaker"), clients, strict=True)
        }
        assert listener.finish() == 0, listener.output()
        speaker.proc.terminate()
        speaker.finish(15)
    finally:
        for cli in clients:
            if cli.proc.poll() is None:
                cli.proc.kill()
                cli.proc.wait()
        first.stop()
        if second is not None:
            assert second.stop() == 0, second.log_text()
    out = listener.output()
    assert "left after" in out, out
    heard = read_audio(heard_path)
    # The gap (at least the server's 5 s reconnect_after) was filled with silence: the file's
    # timeline is the --duration, not the duration minus the outage.
    assert len(heard) >= 0.9 * LISTEN_SECONDS * RATE, (len(heard) / RATE, out)
    levels = loudness(heard)
    loud = [value > 1000 for value in levels]
    first_loud = loud.index(True)
    # Tone before the restart, then a silent gap of seconds, then the tone again until the end.
    silent_runs = "".join("L" if x else "s" for x in loud[first_loud:])
    assert re.search(r"L+s{6,}L+", silent_runs), levels
    tail = heard[-2 * RATE :]
    assert all(loud[-4:]), levels
    assert band_energy(tail, 440.0) > 0.8
    record(
        "cli_reconnect_daemon_restart",
        seconds_to_rejoin={
            name: float(match.group(2))
            for name, line in back.items()
            if (match := BACK_RE.search(line))
        },
        silent_gap_seconds=round(max(len(r) for r in re.findall(r"s+", silent_runs)) / 2, 1),
        recorded_seconds=round(len(heard) / RATE, 2),
    )


def test_join_without_reconnect_ends_when_the_daemon_stops(tmp_path):
    daemon = start_salond(tmp_path / "state")
    try:
        run_once(daemon, tmp_path, "Host", "create", "brief", "--title", "Brief", "--persistent")
        listener = run_cli(
            daemon,
            tmp_path,
            "Listener",
            "join",
            "brief",
            "--duration",
            "60",
            "--no-reconnect",
            "--quiet",
            "--no-input",
        )
        listener.wait_for("joined brief")
        assert daemon.stop() == 0, daemon.log_text()
        assert listener.finish(30) == 1, listener.output()
        listener.wait_for("connection lost")
        assert "reconnecting" not in listener.output()
    finally:
        daemon.stop()


async def test_banned_listener_leaves_and_does_not_come_back(salond, tmp_path):
    host = await SalonClient.connect(
        salond.host,
        salond.port,
        display_name="Host",
        fingerprint=salond.fingerprint,
        credentials={"guest_key": "aG9zdC1rZXktZm9yLWNsaS1yZWNvbm5lY3QtdGVzdA=="},
    )
    listener: Cli | None = None
    try:
        await host.create_room("Strict", room="strict")
        await host.join("strict")
        listener = run_cli(
            salond,
            tmp_path,
            "Listener",
            "join",
            "strict",
            "--duration",
            "60",
            "--quiet",
            "--no-input",
        )
        joined = await host.wait_for_event(
            msg.ParticipantJoined,
            timeout=20,
            where=lambda e: e.participant.display_name == "Listener",
        )
        await host.call("ban", user=joined.participant.user, reason="test")
        assert listener.finish(30) == 0, listener.output()
        listener.wait_for("banned from strict for good: test")
        assert "reconnecting" not in listener.output()
    finally:
        if listener is not None and listener.proc.poll() is None:
            listener.proc.kill()
            listener.proc.wait()
        await host.close()
