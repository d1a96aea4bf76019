"""Batched sends (salon.quic.sendbatch): one sendmmsg per tick, and the one-by-one fallback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from salon.quic.fastpath import speedups_available
from salon.quic.sendbatch import BatchingTransport, MMsgSender, sendmmsg_available
from tests.conftest import run_daemon
from tests.test_fastpath import _room_with_listeners, _speaker_datagram

needs_sendmmsg = pytest.mark.skipif(not sendmmsg_available(), reason="no sendmmsg here")
# Both ways of making the call: the C extension (built by the install wherever sendmmsg
# exists, see test_the_c_extension_is_built) and ctypes, its fallback.
built = pytest.mark.skipif(not speedups_available(), reason="the C extension was not built")
calls_sendmmsg = pytest.mark.parametrize(
    "use_c", [pytest.param(True, marks=built), False], ids=["C", "ctypes"]
)


def _receivers(family: int, host: str, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.settimeout(2.0)
        sockets.append(sock)
    return sockets


@needs_sendmmsg
@calls_sendmmsg
@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_sendmmsg_delivers_every_packet_to_its_address_in_order(
    family: int, host: str, use_c: bool
):
    try:
        receivers = _receivers(family, host, 3)
    except OSError:
        pytest.skip(f"no {host} here")
    sender_socket = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # More packets than one call takes, of different sizes, to interleaved addresses.
        sender = MMsgSender(sender_socket, batch=7, use_c=use_c)
        assert sender.in_c == use_c
        packets = [bytes([index]) * (20 + index) for index in range(30)]
        addrs = [receivers[index % 3].getsockname() for index in range(30)]
        assert sender.send(packets, addrs) == (30, 0)
        for which, receiver in enumerate(receivers):
            got = [receiver.recvfrom(2048)[0] for _ in range(10)]
            assert got == packets[which::3]
    finally:
        sender_socket.close()
        for receiver in receivers:
            receiver.close()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.errors: list[OSError] = []

    def error_received(self, exc: Exception) -> None:
        assert isinstance(exc, OSError)
        self.errors.append(exc)


@pytest.mark.parametrize(
    ("batched", "use_c"),
    [pytest.param(True, True, marks=built), (True, False), (False, False)],
    ids=["sendmmsg-C", "sendmmsg-ctypes", "sendto"],
)
async def test_held_sends_leave_together_and_a_refused_packet_is_reported(
    batched: bool, use_c: bool
):
    """While held, nothing leaves (sendto: sent at once); on release every packet arrives in
    order, and a packet the kernel refuses (broadcast without SO_BROADCAST) is reported as
    asyncio would, without losing the packets after it."""
    if batched and not sendmmsg_available():
        pytest.skip("no sendmmsg here")
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _Protocol, local_addr=("127.0.0.1", 0)
    )
    receiver = _receivers(socket.AF_INET, "127.0.0.1", 1)[0]
    counted: list[tuple[int, int]] = []
    sender = MMsgSender(transport.get_extra_info("socket"), use_c=use_c) if batched else None
    batching = BatchingTransport(transport, lambda n, size: counted.append((n, size)), sender)
    try:
        address = receiver.getsockname()
        batching.hold()
        for index in range(5):
            batching.sendto(bytes([index]) * 10, address)
        batching.sendto(b"refused", ("255.255.255.255", 9))
        for index in range(5, 8):
            batching.sendto(bytes([index]) * 10, address)
        if batched:
            receiver.setblocking(False)
            with pytest.raises(BlockingIOError):
                receiver.recvfrom(100)  # nothing left while held
            receiver.setblocking(True)
        batching.release()
        got = [receiver.recvfrom(100)[0] for _ in range(8)]
        assert got == [bytes([index]) * 10 for index in range(8)]
        await asyncio.sleep(0)
        assert [exc.errno for exc in protocol.errors] == [13]  # EACCES
        assert batching.calls == (1 if batched else 0)
        assert sum(n for n, _ in counted) == 9
        # Not held: straight through.
        batching.sendto(b"direct", address)
        assert receiver.recvfrom(100)[0] == b"direct"
    finally:
        receiver.close()
        transport.close()


@pytest.mark.parametrize(
    ("send_batch", "c_extension"),
    [("sendmmsg", True), ("sendto", True), ("sendmmsg", False)],
    ids=["sendmmsg", "sendto", "without-C-extension"],
)
async def test_salond_forwards_with_each_send_path(
    tmp_path: Any,
    send_batch: str,
    c_extension: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    """Also as salond runs where the C extension was not built: sealing, opening and the
    batched send in Python, said once in the log."""
    import logging

    from salon.quic import ackpath, fastpath, sendbatch

    if not c_extension:
        monkeypatch.setattr(fastpath, "_speedups", None)
        monkeypatch.setattr(fastpath, "C_SEAL", False)
        monkeypatch.setattr(ackpath, "C_OPEN", False)
        monkeypatch.setattr(sendbatch, "_speedups", None)
    caplog.set_level(logging.INFO, logger="salon.net")
    async with run_daemon(tmp_path / "state", **{"tuning.send_batch": send_batch}) as live:
        speaker, key, listeners = await _room_with_listeners(live, 3)
        received: dict[int, list[bytes]] = {id(c): [] for c in listeners}
        for client in listeners:
            client.on_datagram = received[id(client)].append
        sent = [_speaker_datagram(key, seq) for seq in range(30)]
        for data in sent:
            speaker.send_datagram(data)
            await asyncio.sleep(0.005)
        for _ in range(200):
            if all(len(got) == len(sent) for got in received.values()):
                break
            await asyncio.sleep(0.02)
        assert all(got == sent for got in received.values())
        sending = live.daemon.server._sending
        assert sending is not None
        assert sending.batching == (send_batch == "sendmmsg" and sendmmsg_available())
        if sending.batching:
            # Each tick's copies to the three listeners left in one call, not three.
            assert 0 < sending.calls < 3 * len(sent)
        else:
            assert sending.calls == 0
        not_built = [r for r in caplog.records if "_speedups not in use" in r.getMessage()]
        assert len(not_built) == (0 if c_extension and speedups_available() else 1)
        if sending._sender is not None:
            assert sending._sender.in_c == (c_extension and speedups_available())
