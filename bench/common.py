"""Shared pieces of the load benchmarks: servers as processes, a light QUIC client, statistics.

The bench client speaks ``salon/1`` with aioquic directly (control stream framing, hello, join,
media datagrams) but carries no Opus and no SRTP: the forwarder reads only the clear RTP header
and never decrypts, so a datagram with a valid RTP header and a bench payload (sender, sequence
number, send time) costs the server exactly what a real one of the same size does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import signal
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioquic.asyncio.client import connect as quic_connect
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from salon.daemon.wire import messages as msg
from salon.daemon.wire.framing import MessageReader, frame_message
from salon.quic.ackpath import AckFastPath
from salon.quic.protocol import CLIENT_ACK_DELAY, SalonQuicProtocol, delay_acks

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")
FINGERPRINT_RE = re.compile(r"fingerprint (sha256:[0-9A-F:]+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ALPN = "salon/1"

# A media datagram as our speakers send it: flow id (one-byte varint), RTP header (version 2,
# extension bit, Opus payload type), a one-byte header extension block with the audio level,
# then the payload. The bench payload starts with (speaker index, sequence, send time in ns of
# CLOCK_MONOTONIC, which every process on the machine shares) and is padded to the size of a
# 32 kbit/s Opus frame plus the 16-byte SRTP tag.
BENCH_PAYLOAD = struct.Struct("!HIq")
PAYLOAD_SIZE = 81 + 16
RTP_HEADER = struct.Struct("!BBHIIHHBBBB")
MEDIA_OFFSET = 1 + RTP_HEADER.size
SEND_TIME_OFFSET = MEDIA_OFFSET + struct.calcsize("!HI")
"""Where a bench datagram carries its send time (8 bytes, big-endian)."""


def now_ns() -> int:
    return time.monotonic_ns()


def media_datagram(flow_id: int, ssrc: int, speaker: int, seq: int, sent_ns: int) -> bytes:
    """A media datagram whose payload carries the bench fields (flow id below 64)."""
    header = RTP_HEADER.pack(
        0x90, 111, seq & 0xFFFF, (seq * 960) & 0xFFFFFFFF, ssrc, 0xBEDE, 1, 0x10, 0x80 | 30, 0, 0
    )
    body = BENCH_PAYLOAD.pack(speaker, seq, sent_ns)
    return bytes((flow_id,)) + header + body + bytes(PAYLOAD_SIZE - len(body))


def read_media(data: bytes) -> tuple[int, int, int]:
    """(speaker, seq, sent_ns) of a bench datagram."""
    return BENCH_PAYLOAD.unpack_from(data, MEDIA_OFFSET)


# ---------------------------------------------------------------------------------- event loop


def install_fast_loop() -> str:
    """Use uvloop for the load generators when it is installed; returns the loop's name.

    ``BENCH_GENERATOR_LOOP=asyncio`` keeps asyncio's loop (to compare salond's loops with the
    same generator; the listener fleet fails to connect on uvloop 0.23)."""
    if os.environ.get("BENCH_GENERATOR_LOOP") == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


# ---------------------------------------------------------------------------------- bench client


class RequestFailed(Exception):
    pass


class _CountingTransport:
    """A session's datagram transport that counts what it sends while the session counts."""

    def __init__(self, inner: Any, protocol: BenchProtocol) -> None:
        self._inner = inner
        self._protocol = protocol

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self._protocol.counting:
            self._protocol.packets_out += 1
        self._inner.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


FAST_RECEIVE = os.environ.get("BENCH_FAST_RECEIVE", "1") != "0"
"""Whether the load generator's sessions take salon.quic's receive fast path (set the
environment variable to 0 to compare with aioquic's receive_datagram)."""


class BenchProtocol(SalonQuicProtocol):
    """A ``salon/1`` session without audio: requests, events and raw media datagrams."""

    def __init__(self, *args: Any, ack_delay: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if ack_delay is not None:
            delay_acks(self._quic, ack_delay)
        self.reader = MessageReader()
        self.stream_id: int | None = None
        self.next_id = 1
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[Any] = []
        self.event_added = asyncio.Event()
        self.on_media: Callable[[bytes], None] | None = None
        self.terminated = False
        self.user = ""
        self.receive_path: AckFastPath | None = (
            AckFastPath(self._quic, accept_datagrams=True) if FAST_RECEIVE else None
        )
        """Packets of audio and ACKs applied without aioquic's general receive path."""
        self.counting = False
        """While set, UDP packets in and out are counted (the listeners' measurement window)."""
        self.packets_in = 0
        self.packets_out = 0

    def connection_made(self, transport: Any) -> None:
        # Count through a wrapper: uvloop's transports do not let sendto be replaced.
        super().connection_made(_CountingTransport(transport, self))

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.counting:
            self.packets_in += 1
        # A listener only acknowledges: its ACKs leave on aioquic's ACK timer, so after a
        # packet the load generator only moves the timer earlier when it has to, instead of
        # running aioquic's packet writer for nothing (which would make it the bottleneck).
        quic = self._quic
        now = self._loop.time()
        fast = self.receive_path
        if fast is None or not fast.receive(data, addr, now):  # type: ignore[arg-type]
            quic.receive_datagram(data, addr, now=now)  # type: ignore[arg-type]
            if any(isinstance(event, quic_events.StreamDataReceived) for event in quic._events):
                # As the reference client (ClientProtocol): control data is acknowledged at
                # once, only media ACKs wait.
                for space in quic._spaces.values():
                    if space.ack_at is not None:
                        space.ack_at = now
        self._process_events()
        timer_at = quic.get_timer()
        if (
            quic._datagrams_pending
            or self._timer is None
            or self._timer_at is None
            or (timer_at is not None and timer_at < self._timer_at)
        ):
            self.transmit()

    def stop_timer(self) -> None:
        """Cancel the connection's timer (its connection is handed to the listener fleet)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def quic_event_received(self, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.DatagramFrameReceived):
            if self.on_media is not None:
                self.on_media(event.data)
            # The reference client's ACK-state PING (salon.quic.protocol).
            self.count_datagram_received()
        elif isinstance(event, quic_events.StreamDataReceived):
            for payload in self.reader.feed(event.data):
                message = msg.decode_server_message(payload)
                if isinstance(message, msg.Ok):
                    future = self.pending.pop(message.re, None)
                    if future is not None and not future.done():
                        future.set_result(message.result)
                elif isinstance(message, msg.Error) and message.re in self.pending:
                    future = self.pending.pop(message.re)
                    if not future.done():
                        future.set_exception(RequestFailed(f"{message.code}: {message.message}"))
                else:
                    self.events.append(message)
                    self.event_added.set()
        elif isinstance(event, quic_events.ConnectionTerminated):
            self.terminated = True
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(RequestFailed(event.reason_phrase or "closed"))
            self.pending.clear()
            self.event_added.set()

    async def call(self, type_: str, timeout: float = 90.0, **fields: Any) -> dict[str, Any]:
        if self.stream_id is None:
            self.stream_id = self._quic.get_next_available_stream_id()
        request_id = self.next_id
        self.next_id += 1
        request = msg.REQUEST_TYPES[type_](id=request_id, **fields)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self.pending[request_id] = future
        self._quic.send_stream_data(self.stream_id, frame_message(msg.encode(request)))
        self.transmit()
        return await asyncio.wait_for(future, timeout)

    async def wait_event(self, where: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        deadline = self._loop.time() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if where(event):
                    return event
            seen = len(self.events)
            remaining = deadline - self._loop.time()
            if remaining <= 0 or self.terminated:
                raise RequestFailed("expected event did not arrive")
            self.event_added.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.event_added.wait(), remaining)

    def send_media(self, data: bytes) -> None:
        self._quic.send_datagram_frame(data)
        self.transmit()


@dataclass
class BenchSession:
    protocol: BenchProtocol
    manager: Any

    async def close(self) -> None:
        if self.manager is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.manager.__aexit__(None, None, None), 2.0)


def client_configuration() -> QuicConfiguration:
    configuration = QuicConfiguration(
        alpn_protocols=[ALPN], is_client=True, max_datagram_frame_size=65536
    )
    configuration.verify_mode = ssl.CERT_NONE
    return configuration


async def open_session(
    host: str,
    port: int,
    name: str,
    index: int,
    ack_delay: float = CLIENT_ACK_DELAY,
    endpoint: Any = None,
) -> BenchSession:
    """Connect and say hello as a guest whose key derives from ``name`` and ``index``.

    With ``endpoint`` (a ``bench.listener_fleet.SharedEndpoint``) the connection uses that
    endpoint's socket instead of one of its own.
    """
    # The same acknowledgement delay as the reference client (see client/connection.py).
    create_protocol = functools.partial(BenchProtocol, ack_delay=ack_delay)
    manager: Any = None
    if endpoint is None:
        manager = quic_connect(
            host, port, configuration=client_configuration(), create_protocol=create_protocol
        )
        protocol = await asyncio.wait_for(manager.__aenter__(), 90.0)
    else:
        protocol = create_protocol(QuicConnection(configuration=client_configuration()))
        endpoint.routes[protocol._quic.host_cid] = protocol
        protocol.connection_made(endpoint.transport)
        protocol.connect((host, port))
        await asyncio.wait_for(protocol.wait_connected(), 90.0)
        endpoint.learn(protocol)
    assert isinstance(protocol, BenchProtocol)
    await say_hello(protocol, name, index)
    return BenchSession(protocol, manager)


async def say_hello(protocol: BenchProtocol, name: str, index: int) -> None:
    import base64
    import hashlib

    key = base64.b64encode(hashlib.sha256(f"bench/{name}/{index}/{os.getpid()}".encode()).digest())
    result = await protocol.call(
        "hello",
        version=msg.PROTOCOL_VERSION,
        display_name=f"{name}-{index}",
        credentials={"guest_key": key.decode()},
        client="salon-bench",
    )
    protocol.user = str(result.get("user", ""))


# ---------------------------------------------------------------------------------- processes


@dataclass
class ServerProcess:
    """A forwarding server (salond or the naive forwarder) running as its own process."""

    proc: subprocess.Popen[str]
    kind: str
    lines: list[str] = field(default_factory=list)
    host: str = ""
    port: int = 0
    fingerprint: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 8.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _toml(value: bool | int | str | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


BENCH_LIMITS: dict[str, int | float] = {
    "guest_connections_per_address": 100000,
    "guest_connect_rate": 0.0,
    "guest_rooms_per_address": 100000,
    "guest_create_rate": 0.0,
}
"""salond's ``[limits]`` in the benchmarks: every load generator connects from one address."""


def start_server(
    kind: str,
    state_dir: Path,
    tuning: Mapping[str, bool | int | str] | None = None,
    timeout: float = 30.0,
    args: tuple[str, ...] = (),
    config_text: str = "",
) -> ServerProcess:
    """Start ``salond`` (kind "salond") or ``bench/naive_forwarder.py`` (kind "naive");
    ``tuning``: salond's ``[tuning]`` keys that differ from the defaults; ``args``: more
    command-line arguments for salond (e.g. its own ``--config``, without ``tuning``);
    ``config_text``: more tables for the bench's configuration file (e.g. ``[cluster]``)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if kind.startswith("naive"):
        command = [
            sys.executable,
            str(BENCH_DIR / "naive_forwarder.py"),
            "--state-dir",
            str(state_dir),
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "salon.daemon.app",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--state-dir",
            str(state_dir),
            "--log-level",
            "info",
            *args,
        ]
        # Every bench client comes from 127.0.0.1: lift the per-address guest limits.
        lines = ["[limits]"] + [f"{key} = {_toml(value)}" for key, value in BENCH_LIMITS.items()]
        if tuning:
            lines += ["[tuning]"] + [f"{key} = {_toml(value)}" for key, value in tuning.items()]
        if config_text:
            lines.append(config_text)
        config = state_dir / "salond.toml"
        config.write_text("\n".join(lines) + "\n")
        command += ["--config", str(config)]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=REPO,
    )
    server = ServerProcess(proc=proc, kind=kind)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)
            if match := LISTEN_RE.search(line):
                server.host, server.port = match.group(1), int(match.group(2))
            if match := FINGERPRINT_RE.search(line):
                server.fingerprint = match.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or not server.port:
        server.stop()
        raise RuntimeError(f"{kind} did not start:\n{server.log_text()}")
    return server


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from its own accounting in /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # Fields after the command name start at field 3 (state); utime and stime are 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def udp_receive_buffer_errors() -> int:
    """The kernel's count of UDP packets dropped because a socket's receive buffer was full."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    except OSError:
        return 0
    udp = [line for line in lines if line and line[0] == "Udp:"]
    if len(udp) < 2 or "RcvbufErrors" not in udp[0]:
        return 0
    return int(udp[1][udp[0].index("RcvbufErrors")])


def process_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def machine_description() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop  # noqa: F401

        has_uvloop = True
    except ImportError:
        has_uvloop = False
    import aioquic

    return {
        "nproc": os.cpu_count(),
        "cpu": model or "unknown",
        "python": sys.version.split()[0],
        "aioquic": aioquic.__version__,
        "uvloop": has_uvloop,
    }
