"""Another local user cannot use the admin socket: file mode 0600, and the peer's uid checked."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SalondProcess, start_salond

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

CONNECT_REFUSED = 10
NO_WELCOME = 11
WELCOMED = 12


@pytest.fixture
def open_salond() -> Iterator[SalondProcess]:
    """A salond whose state directory every user can traverse (so only the socket's own
    permissions stand between another user and the API)."""
    base = Path(tempfile.mkdtemp(prefix="salon-perm-"))
    base.chmod(0o755)
    daemon = start_salond(base / "state")
    (base / "state").chmod(0o755)
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def connect_as_nobody(path: Path) -> int:
    """Fork, become ``nobody``, try the socket; the child's exit status says what happened."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(5)
            try:
                probe.connect(str(path))
            except PermissionError:
                code = CONNECT_REFUSED
            else:
                code = WELCOMED if probe.recv(4096) else NO_WELCOME
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_socket_mode_keeps_other_users_out(open_salond: SalondProcess) -> None:
    path = open_salond.state_dir / "admin.sock"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert connect_as_nobody(path) == CONNECT_REFUSED


def test_daemon_refuses_another_user_even_when_the_mode_is_loosened(
    open_salond: SalondProcess,
) -> None:
    path = open_salond.state_dir / "admin.sock"
    path.chmod(0o666)  # an operator's mistake: the peer's uid check still holds
    assert connect_as_nobody(path) == NO_WELCOME
    deadline = time.monotonic() + 10
    while "admin connection from uid" not in open_salond.log_text():
        assert time.monotonic() < deadline, open_salond.log_text()
        time.sleep(0.05)


def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    """Its owner could swap the socket for their own: salond will not serve from there."""
    import pwd

    from salon.daemon.admin.socket_path import AdminSocketError, check_socket_path

    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(AdminSocketError, match="belongs to another user"):
        check_socket_path(theirs / "admin.sock")
