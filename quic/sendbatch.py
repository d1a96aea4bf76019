"""Batched sends: the packets of one event-loop tick leave in one ``sendmmsg`` system call.

A forwarding tick sends one packet per listener; through asyncio's transport each one is a
``sendto`` system call (~3 µs here, the largest single cost of a copy). Linux's ``sendmmsg``
takes many (buffer, address) pairs in one call. Python's ``socket`` module lacks it, so it is
called through ``ctypes`` on the C library: no compiler, nothing to build at install.

:class:`BatchingTransport` sits between the connections and asyncio's datagram transport.
While the server holds it (:meth:`~BatchingTransport.hold`, around the flush of a tick and a
batch of received datagrams) ``sendto`` only queues; :meth:`~BatchingTransport.release` sends
the queue with one ``sendmmsg`` (chunks of :data:`MAX_BATCH`). Whatever the call cannot send
at once (a full socket buffer, an error for one packet) goes through asyncio's own ``sendto``,
which buffers it or reports the error exactly as without batching; so does every packet while
asyncio's transport still has a backlog, so that the order on the wire stays the order sent.

The call itself is made by the optional C extension ``salon.quic._speedups`` when it was built
(the addresses converted and the message headers filled in C), else through ``ctypes``.

``[tuning] send_batch`` chooses: ``sendmmsg`` (default where it works), or ``sendto``, the
pure-Python path (one ``sendto`` per packet through asyncio's transport, still counted).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from salon.quic import load_speedups

_speedups = load_speedups()

log = logging.getLogger("salon.net")

MAX_BATCH = 256
"""Packets per ``sendmmsg`` call at most (the kernel's own limit, UIO_MAXIOV, is 1024)."""


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


_IOV_SIZE = ctypes.sizeof(_IoVec)
_HDR_SIZE = ctypes.sizeof(_MMsgHdr)
_NAME_OFFSET = _MsgHdr.msg_name.offset
_NAMELEN_OFFSET = _MsgHdr.msg_namelen.offset
_IOV_OFFSET = _MsgHdr.msg_iov.offset
_IOVLEN_OFFSET = _MsgHdr.msg_iovlen.offset
_MSG_LEN_OFFSET = _MMsgHdr.msg_len.offset
_POINTER = "P"
_IOV_FORMAT = struct.Struct("@PN")
_NAME_FORMAT = struct.Struct("@PI")


def _load_sendmmsg() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


_sendmmsg = _load_sendmmsg()


def sendmmsg_available() -> bool:
    """Whether this platform's C library has ``sendmmsg`` (Linux)."""
    return _sendmmsg is not None


def _sockaddr(family: int, addr: Any) -> bytes:
    """The C ``sockaddr_in`` / ``sockaddr_in6`` of a Python socket address."""
    port = struct.pack("!H", addr[1])
    if family == socket.AF_INET:
        return (
            struct.pack("@H", socket.AF_INET)
            + port
            + socket.inet_pton(socket.AF_INET, addr[0])
            + bytes(8)
        )
    host = addr[0].split("%", 1)[0]
    flowinfo = addr[2] if len(addr) > 2 else 0
    scope_id = addr[3] if len(addr) > 3 else 0
    return (
        struct.pack("@H", socket.AF_INET6)
        + port
        + struct.pack("!I", flowinfo)
        + socket.inet_pton(socket.AF_INET6, host)
        + struct.pack("@I", scope_id)
    )


class MMsgSender:
    """Sends lists of (packet, address) on one socket with ``sendmmsg``.

    The C arrays are allocated once; each call fills one ``iovec`` and one name pointer per
    packet. Packets are joined into one buffer so that a single address covers them all.
    Addresses are converted once and kept (a server talks to the same peers all the time);
    :data:`ADDRESS_CACHE` bounds that memory.
    """

    ADDRESS_CACHE = 65536

    def __init__(
        self, sock: socket.socket, batch: int = MAX_BATCH, use_c: bool | None = None
    ) -> None:
        if _sendmmsg is None:
            raise OSError(errno.ENOSYS, "sendmmsg is not available on this platform")
        if use_c is None:
            use_c = _speedups is not None
        if use_c and _speedups is None:
            raise RuntimeError("the C extension salon.quic._speedups was not built")
        self.in_c = bool(use_c)
        """Whether :meth:`send` calls ``sendmmsg`` through the C extension (else ``ctypes``)."""
        self._fd = sock.fileno()
        self._family = sock.family
        self._batch = batch
        self._hdrs = ctypes.create_string_buffer(_HDR_SIZE * batch)
        self._iovs = ctypes.create_string_buffer(_IOV_SIZE * batch)
        self._hdrs_address = ctypes.addressof(self._hdrs)
        iovs_address = ctypes.addressof(self._iovs)
        for index in range(batch):
            base = index * _HDR_SIZE
            struct.pack_into("@P", self._hdrs, base + _IOV_OFFSET, iovs_address + index * _IOV_SIZE)
            struct.pack_into("@N", self._hdrs, base + _IOVLEN_OFFSET, 1)
        self._names: dict[Any, tuple[int, int, Any]] = {}

    def _name(self, addr: Any) -> tuple[int, int, Any]:
        name = self._names.get(addr)
        if name is None:
            if len(self._names) >= self.ADDRESS_CACHE:
                self._names.clear()
            raw = ctypes.create_string_buffer(_sockaddr(self._family, addr))
            name = (ctypes.addressof(raw), len(raw.raw), raw)
            self._names[addr] = name
        return name

    def send(self, packets: list[bytes], addrs: list[Any]) -> tuple[int, int]:
        """Send ``packets[i]`` to ``addrs[i]`` in order, up to the first one the kernel refuses.

        Returns (how many were sent, errno of the first refused one or 0).
        """
        if self.in_c:
            return _speedups.sendmmsg(self._fd, self._family, packets, addrs)
        total = len(packets)
        done = 0
        while done < total:
            count = min(self._batch, total - done)
            chunk = packets[done : done + count]
            # One buffer for the chunk; keep the reference alive through the call.
            joined = b"".join(chunk)
            base = ctypes.cast(ctypes.c_char_p(joined), ctypes.c_void_p).value or 0
            iovs = self._iovs
            hdrs = self._hdrs
            pack_iov = _IOV_FORMAT.pack_into
            pack_name = _NAME_FORMAT.pack_into
            name_of = self._name
            names = self._names
            offset = 0
            for index in range(count):
                length = len(chunk[index])
                pack_iov(iovs, index * _IOV_SIZE, base + offset, length)
                offset += length
                addr = addrs[done + index]
                name = names.get(addr) or name_of(addr)
                pack_name(hdrs, index * _HDR_SIZE + _NAME_OFFSET, name[0], name[1])
            sent = _sendmmsg(self._fd, self._hdrs_address, count, 0)
            if sent < 0:
                return done, ctypes.get_errno()
            done += sent
            if sent < count:
                # The kernel stopped early (buffer full, or an error for the next packet):
                # the caller hands the rest to the normal path, which reports or buffers.
                return done, 0
        return done, 0


class BatchingTransport:
    """A datagram transport whose ``sendto`` batches while held, and counts every packet.

    ``counter(packets, bytes)`` is called for everything sent (the socket's traffic counters).
    """

    def __init__(
        self,
        inner: Any,
        counter: Callable[[int, int], None],
        sender: MMsgSender | None,
    ) -> None:
        self._inner = inner
        self._counter = counter
        self._sender = sender
        self._held = 0
        self._packets: list[bytes] = []
        self._addrs: list[Any] = []
        self.calls = 0
        """System calls made by :meth:`release` (for the benchmarks)."""

    @property
    def batching(self) -> bool:
        return self._sender is not None

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self._held and self._sender is not None:
            self._packets.append(data)
            self._addrs.append(addr)
            return
        self._counter(1, len(data))
        self._inner.sendto(data, addr)

    def batch_lists(self) -> tuple[list[bytes], list[Any]] | None:
        """While held (and batching): the lists the next ``sendmmsg`` sends, for a caller that
        appends packets and their addresses itself (the media link, in C); else None."""
        if self._held and self._sender is not None:
            return self._packets, self._addrs
        return None

    def hold(self) -> None:
        """Queue every ``sendto`` until the matching :meth:`release`."""
        self._held += 1

    def release(self) -> None:
        """Send what was queued since :meth:`hold` (when the outermost hold ends)."""
        self._held -= 1
        if self._held or not self._packets:
            return
        packets, addrs = self._packets, self._addrs
        self._packets, self._addrs = [], []
        self.send_all(packets, addrs)

    def send_all(self, packets: list[bytes], addrs: list[Any]) -> None:
        inner = self._inner
        sender = self._sender
        done = 0
        total = len(packets)
        if sender is not None and not inner.get_write_buffer_size() and not inner.is_closing():
            self.calls += 1
            done, _error = sender.send(packets, addrs)
            self._counter(done, sum(map(len, packets[:done])))
        # The rest (socket buffer full, an error, or asyncio still has a backlog): asyncio's
        # own sendto buffers it in order or reports the error to the protocol.
        for index in range(done, total):
            data = packets[index]
            self._counter(1, len(data))
            inner.sendto(data, addrs[index])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
