"""Safety checks for the admin socket's path: salond refuses to serve the API from a place where
another user could take the socket over or read what goes through it."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path


class AdminSocketError(OSError):
    """The admin socket cannot be served safely at the configured path."""


def check_socket_path(path: Path) -> None:
    """Refuse unsafe places; remove a stale socket left by a salond that died.

    Refused: a parent directory writable by group or others, or owned by another user (they
    could replace the socket), and anything at ``path`` that is not a socket (a file, a
    directory, a symbolic link) or that is a socket a running salond still answers on.
    A missing parent directory is created, private to this user.
    """
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.stat(parent)
    if not stat.S_ISDIR(info.st_mode):
        raise AdminSocketError(f"admin.socket: {str(parent)!r} is not a directory")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AdminSocketError(
            f"admin.socket: directory {str(parent)!r} is writable by other users"
            f" (mode {stat.S_IMODE(info.st_mode):04o}): another user could replace the socket;"
            " use a private directory (e.g. chmod 700) or set admin.socket elsewhere"
        )
    if info.st_uid not in (os.geteuid(), 0):
        raise AdminSocketError(
            f"admin.socket: directory {str(parent)!r} belongs to another user (uid {info.st_uid})"
        )
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        kind = (
            "a symbolic link"
            if stat.S_ISLNK(found.st_mode)
            else "a directory"
            if stat.S_ISDIR(found.st_mode)
            else "a file"
        )
        raise AdminSocketError(
            f"admin.socket: {str(path)!r} is {kind}, not a socket; refusing to replace it"
        )
    if socket_answers(path):
        raise AdminSocketError(
            f"admin.socket: {str(path)!r} is in use (is another salond running with this state?)"
        )
    path.unlink()


def socket_answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_private_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` that only this user can connect to (mode 0600)."""
    check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the socket file private from the moment it exists; chmod makes sure.
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process on the other end of a Unix socket (Linux), or None."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    import struct

    data = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", data)
    return int(uid)


def user_name(uid: int | None) -> str:
    if uid is None:
        return "unknown"
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)
