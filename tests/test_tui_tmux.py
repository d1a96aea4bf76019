"""``salon-admin`` as an operator runs it: the installed command inside tmux, keys typed into
the pane, the screen read back as text, against a real salond and a real knocking client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import SalondProcess, salon_cli, start_salond

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]
WAIT = 30.0
"""Safety net for every wait (never a measure of speed)."""


class Tmux:
    """A tmux server of this test's own (``-S``), so no user's sessions are touched."""

    def __init__(self, socket: Path) -> None:
        self.server = str(socket)
        self.session = "salon-admin"

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.server, *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TERM": "xterm-256color"},
            timeout=30,
        )
        return done.stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session)

    def wait_for(self, check: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + WAIT
        while True:
            text = self.screen()
            if check(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text}")
            time.sleep(0.2)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[SalondProcess]:
    running = start_salond(tmp_path / "state")
    yield running
    running.stop()


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    session = Tmux(tmp_path / "tmux.sock")
    yield session
    subprocess.run(["tmux", "-S", session.server, "kill-server"], capture_output=True, check=False)


def salonctl(socket: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "salon.daemon.admin.ctl", "--socket", str(socket), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_operator_approves_a_knock_from_tmux(
    daemon: SalondProcess, tmux: Tmux, tmp_path: Path
) -> None:
    socket = daemon.state_dir / "admin.sock"
    salonctl(
        socket, "create", "lobby", "--title", "The lobby", "--policy", "approval", "--persistent"
    )
    console = Path(sys.executable).with_name("salon-admin")
    command = f"{console} --socket {socket}" if console.exists() else ""
    if not command:
        command = f"{sys.executable} -m salon.tui.app --socket {socket}"
    tmux.run("new-session", "-d", "-s", tmux.session, "-x", "140", "-y", "44", command)
    tmux.wait_for(lambda s: "connected to salond/" in s and "lobby" in s, "the rooms list")
    visitor = subprocess.Popen(
        salon_cli(
            daemon,
            "join",
            "lobby",
            "--name",
            "Grace Hopper",
            "--guest-key-file",
            str(tmp_path / "grace.key"),
            "--no-input",
            "--duration",
            "2",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        tmux.keys("Enter")  # open the room
        # The heading's count and the knock's row are drawn in separate refreshes.
        tmux.wait_for(
            lambda s: "Knocks (1)" in s and "Grace Hopper" in s and "nothing (guest)" in s,
            "the knock, with who knocks and what they proved",
        )
        tmux.keys("a")  # approve it
        tmux.wait_for(lambda s: "Audience (1)" in s and "Knocks (0)" in s, "the admission")
        out, _ = visitor.communicate(timeout=WAIT)
        assert visitor.returncode == 0 and "joined lobby" in out, out
    finally:
        if visitor.poll() is None:
            visitor.kill()
            visitor.communicate()
    tmux.keys("?")
    tmux.wait_for(lambda s: "Keys — room" in s, "the help screen")
    tmux.keys("Escape", "Escape")
    tmux.wait_for(lambda s: "Audit log" in s and "approve_knock" in s, "the audit log")
    tmux.keys("q")
    deadline = time.monotonic() + WAIT
    while (
        tmux.session
        in subprocess.run(
            ["tmux", "-S", tmux.server, "list-sessions"], capture_output=True, text=True
        ).stdout
    ):
        assert time.monotonic() < deadline, "the console did not quit on q"
        time.sleep(0.2)


def test_hostile_text_leaves_the_operators_terminal_intact(tmp_path: Path, tmux: Tmux) -> None:
    """Terminal escapes in a stored title (written before the text rule existed), markup and a
    lookalike in a knocking guest's name: the pane keeps its title and its screen."""
    import sqlite3

    state = tmp_path / "state"
    first = start_salond(state)
    socket = state / "admin.sock"
    try:
        salonctl(
            socket, "create", "trap", "--title", "Trap", "--policy", "approval", "--persistent"
        )
    finally:
        first.stop()
    with sqlite3.connect(state / "salon.db") as db:
        db.execute(
            "UPDATE rooms SET title = ? WHERE id = 'trap'",
            ("Nice room\x1b]0;pwned\x07\x1b[2J\x1b[H[link=https://evil.example]x[/link]",),
        )
    daemon = start_salond(state)
    try:
        command = f"{sys.executable} -m salon.tui.app --socket {socket}"
        tmux.run("new-session", "-d", "-s", tmux.session, "-x", "140", "-y", "44", command)
        tmux.run("set-option", "-t", tmux.session, "set-titles", "on")
        tmux.wait_for(lambda s: "connected to salond/" in s and "trap" in s, "the rooms list")
        refused = subprocess.run(
            salon_cli(daemon, "rooms", "--name", "\x1b[31mRED\x1b[0m\x1b]0;pwned\x07"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1 and "invalid_text" in refused.stderr, refused.stderr
        assert "\x1b" not in refused.stderr
        visitor = subprocess.Popen(
            salon_cli(
                daemon,
                "join",
                "trap",
                "--name",
                "Gr\u0430ce [link=https://evil.example]Hopper[/link]",
                "--guest-key-file",
                str(tmp_path / "visitor.key"),
                "--no-input",
                "--duration",
                "30",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            tmux.keys("Enter")
            screen = tmux.wait_for(lambda s: "Knocks (1)" in s, "the knock")
            assert "Nice room" in screen and "[link=https://evil.example]x[/link]" in screen
            # Literal markup in the name (cut to the column's width on a small terminal).
            assert "Gr\u0430ce [link=https://evil.e" in screen
            assert "⚠ mixed scripts" in screen
            # The screen is whole: header, panes and footer are all still drawn.
            for part in ("salon-admin", "Stage (0/10)", "Audience (0)", "Requester", "Approve"):
                assert part in screen, part
            title = tmux.run("display-message", "-p", "-t", tmux.session, "#{pane_title}")
            assert "pwned" not in title
        finally:
            visitor.kill()
            visitor.communicate()
    finally:
        daemon.stop()
