"""The QUIC socket read every ``read_interval`` while datagrams keep coming (salon.quic.traffic)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration

from salon.quic.traffic import UdpTraffic


class FakeQuicServer(asyncio.DatagramProtocol):
    """Stands in for aioquic's QuicServer: no connection, every datagram to it."""

    _transport: Any = None
    _configuration = QuicConfiguration(connection_id_length=8)
    _protocols: dict[bytes, Any] = {}

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.changed = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.received) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)


def in_selector(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    """Whether the loop's selector watches ``fd`` (asyncio's selector loop)."""
    try:
        loop._selector.get_key(fd)  # type: ignore[attr-defined]
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("interval", [0.0, 0.2])
async def test_the_socket_is_read_by_a_timer_while_datagrams_come(interval: float) -> None:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        FakeQuicServer, local_addr=("127.0.0.1", 0)
    )
    server._transport = transport
    UdpTraffic().attach(server, read_batch=64, read_interval=interval)
    fd = transport.get_extra_info("socket").fileno()
    address = transport.get_extra_info("sockname")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert in_selector(loop, fd)
        peer.sendto(b"first", address)
        await server.wait_for(1)
        # Datagrams came: with an interval the selector no longer wakes the loop for the
        # socket, a timer reads it; without, asyncio's selector watches it as before.
        assert in_selector(loop, fd) == (interval == 0)
        for index in range(3):
            peer.sendto(bytes([index]), address)
        await server.wait_for(4)
        assert server.received == [b"first", b"\x00", b"\x01", b"\x02"]
        # A timer read that finds the socket empty gives it back to the selector.
        while not in_selector(loop, fd):
            await asyncio.sleep(interval)
        peer.sendto(b"again", address)
        await server.wait_for(5)
    finally:
        peer.close()
        transport.close()


async def test_full_batches_are_read_on_without_waiting_for_the_interval() -> None:
    """The interval only spaces reads that emptied the socket: a full batch is followed by
    another read at once, so the socket takes any rate (here an interval longer than the
    test's time-out)."""
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        FakeQuicServer, local_addr=("127.0.0.1", 0)
    )
    server._transport = transport
    UdpTraffic().attach(server, read_batch=4, read_interval=60.0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for index in range(22):
            peer.sendto(bytes([index]), transport.get_extra_info("sockname"))
        await server.wait_for(22)
        assert server.received == [bytes([index]) for index in range(22)]
    finally:
        peer.close()
        transport.close()


async def test_a_closed_transport_is_not_read_again() -> None:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        FakeQuicServer, local_addr=("127.0.0.1", 0)
    )
    server._transport = transport
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    UdpTraffic().attach(server, read_batch=64, read_interval=0.01)
    fd = transport.get_extra_info("socket").fileno()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.sendto(b"one", transport.get_extra_info("sockname"))
        await server.wait_for(1)
        transport.close()
        await asyncio.sleep(0.05)  # past the interval: the timer's read must not run
        assert not in_selector(loop, fd) and errors == []
    finally:
        peer.close()
