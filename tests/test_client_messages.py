"""What ``salon`` tells its user when things go wrong: a reason and what to do next, never a
traceback. Each runs the real command against a real daemon (or a port nobody serves)."""

from __future__ import annotations

import asyncio
import socket
import sys

from salon.daemon.wire import messages as msg
from tests.conftest import InProcessDaemon

TRACES = ("Traceback", "never retrieved", "Future exception")


async def salon(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "salon.client.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def untraced(text: str) -> bool:
    return not any(trace in text for trace in TRACES)


async def test_malformed_fingerprint_is_a_usage_error() -> None:
    code, out = await salon("rooms", "--fingerprint", "sha256:zz")
    assert code == 2 and untraced(out), out
    assert "--fingerprint" in out and "32 bytes of SHA-256" in out


async def test_unreachable_server_says_why_and_what_to_check() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as idle:
        idle.bind(("127.0.0.1", 0))  # bound, never answering: a server that is not there
        port = idle.getsockname()[1]
        code, out = await salon(
            "rooms", "--server", f"127.0.0.1:{port}", "--insecure", "--connect-timeout", "1"
        )
    assert code == 2 and untraced(out), out
    assert f"no answer from 127.0.0.1:{port} within 1 s" in out
    assert "salond runs there" in out


async def test_unpinned_self_signed_certificate_says_how_to_pin(live: InProcessDaemon) -> None:
    code, out = await salon("rooms", "--server", f"{live.host}:{live.port}")
    assert code == 4 and untraced(out), out
    assert "could not be verified" in out and "--fingerprint sha256:" in out
    assert out.count("\n") == 1, out  # one line, no library warnings


async def join_command(live: InProcessDaemon, room: str, *args: str) -> list[str]:
    return [
        "join",
        room,
        "--server",
        f"{live.host}:{live.port}",
        "--fingerprint",
        live.fingerprint,
        "--no-input",
        "--quiet",
        *args,
    ]


async def test_duration_bounds_the_knock(live: InProcessDaemon, tmp_path) -> None:
    owner = await live.client("Owner")
    await owner.create_room("Closed door", room="door", policy="approval")
    await owner.join("door")
    command = await join_command(
        live, "door", "--duration", "1", "--guest-key-file", str(tmp_path / "k")
    )
    # The knock would wait the room's knock expiry (minutes); --duration ends it first.
    code, out = await salon(*command)
    assert code == 3 and untraced(out), out
    assert "withdrew the knock" in out
    resolved = await owner.wait_for_event(msg.KnockResolved, timeout=10)
    assert resolved.outcome == "cancelled"


async def test_a_ban_is_reported_as_a_ban(live: InProcessDaemon, tmp_path) -> None:
    owner = await live.client("Owner")
    await owner.create_room("Open", room="open")
    await owner.join("open")
    command = await join_command(
        live, "open", "--duration", "60", "--guest-key-file", str(tmp_path / "k")
    )
    task = asyncio.ensure_future(salon(*command))
    joined = await owner.wait_for_event(msg.ParticipantJoined, timeout=30)
    await owner.call("ban", user=joined.participant.user, reason="spam")
    _, out = await asyncio.wait_for(task, 60)
    assert untraced(out), out
    assert "banned from open for good: spam" in out and "removed from" not in out
