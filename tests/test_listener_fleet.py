"""The bench's cheap listeners (bench/listener_fleet.py) acknowledge as the reference client.

Two connected pairs replay the same traffic at the same simulated times: salond's side of
each sends audio through the datagram fast path (now and then a control message, and some
packets are lost on the way), and its ACKs go through the ACK fast path. One client is aioquic
driven as the reference client drives it (``CLIENT_ACK_DELAY``, control data acknowledged at
once, the ACK-state PING); the other was adopted by a :class:`FastListener` after the
handshake. After every tick both servers must agree on what is acknowledged, what was declared
lost, the RTT estimate, congestion control, timers and what they received from the client:
the server cannot tell the cheap listener from the reference client.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic import events as quic_events
from aioquic.tls import Epoch

from bench import listener_fleet
from bench.common import SEND_TIME_OFFSET, media_datagram, read_media
from bench.listener_fleet import Fleet, read_varint, varint
from bench.sansio import SERVER_ADDR
from salon.quic import fastpath
from salon.quic.protocol import ACK_STATE_CHECK, ACK_STATE_LIMIT
from tests.test_ackpath import Side

TICK = 2**-7
"""7.8125 ms: exact both as a binary fraction of a second and in nanoseconds, so that both
clients compute the same ACK delay field from the same times."""


def ns(seconds: float) -> int:
    return round(seconds * 1e9)


class ReferenceClient:
    """aioquic's client connection, driven as salon's ClientProtocol drives it."""

    def __init__(self, side: Side) -> None:
        self.quic = side.client
        self.datagrams = 0
        self.latencies: list[int] = []
        """Latency of each copy received (µs), as the fleet records it."""

    def receive(self, packet: bytes, now: float) -> list[bytes]:
        quic = self.quic
        self.now_ns = ns(now)
        quic.receive_datagram(packet, SERVER_ADDR, now)
        if any(isinstance(event, quic_events.StreamDataReceived) for event in quic._events):
            for space in quic._spaces.values():
                if space.ack_at is not None:
                    space.ack_at = now
        while (event := quic.next_event()) is not None:
            if isinstance(event, quic_events.DatagramFrameReceived):
                self.latencies.append((self.now_ns - read_media(event.data)[2]) // 1000)
                # SalonQuicProtocol.count_datagram_received
                self.datagrams += 1
                space = quic._spaces[Epoch.ONE_RTT]
                if (
                    self.datagrams % ACK_STATE_CHECK == 0
                    and len(space.sent_packets) > ACK_STATE_LIMIT
                ):
                    quic.send_ping(0)
        return [data for data, _ in quic.datagrams_to_send(now)]

    def timer(self, now: float) -> list[bytes]:
        timer = self.quic.get_timer()
        if timer is not None and timer <= now:
            self.quic.handle_timer(now)
        return [data for data, _ in self.quic.datagrams_to_send(now)]


class CheapClient:
    """The same connection adopted by the listener fleet after the handshake, driven through
    the fleet's own loop steps (:meth:`Fleet.deliver`, :meth:`Fleet.acknowledge`): with the C
    extension, its ``FleetReceiver``."""

    def __init__(self, side: Side, now: float) -> None:
        # No socket: what the fleet would send is taken from its outbox.
        self.fleet = Fleet(None, SERVER_ADDR, SEND_TIME_OFFSET)  # type: ignore[arg-type]
        self.fleet.latencies = []
        self.fleet.start((0, 2**62))
        self.listener = self.fleet.adopt(side.client, now, now_ns=ns(now))

    def receive(self, packet: bytes, now: float) -> list[bytes]:
        self.fleet.deliver(packet, ns(now))
        return self._drain()

    def timer(self, now: float) -> list[bytes]:
        self.fleet.acknowledge(ns(now))
        return self._drain()

    def _drain(self) -> list[bytes]:
        out = list(self.fleet.outbox)
        self.fleet.outbox.clear()
        return out


def lost_on_the_way(tick: int) -> bool:
    """Server packets the network drops after a clean first 9 s (long enough for the ACK-state
    PING): a few single losses and a burst."""
    return tick > 1200 and (tick % 97 == 7 or 1400 <= tick < 1415)


def open_control_stream(side: Side) -> None:
    """The client's hello on stream 0, answered, before the listener is adopted."""
    pair = side.pair
    side.client.send_stream_data(0, b"hello")
    for _ in range(3):
        pair.exchange()
        pair.now += 0.05
    side.server.send_stream_data(0, b"ok")
    for _ in range(3):
        pair.exchange()
        pair.now += 0.05
    while side.client.next_event() is not None:
        pass
    while side.server.next_event() is not None:
        pass


@pytest.mark.parametrize("path", ["C", "Python"])
def test_the_server_cannot_tell_a_cheap_listener_from_the_reference_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
):
    if path == "C" and not fastpath.speedups_available():
        pytest.skip("the C extension was not built (test_speedups.py fails for that)")
    if path == "Python":
        monkeypatch.setattr(listener_fleet, "_speedups", None)
    sides = [Side(tmp_path / "a", fast_acks=True), Side(tmp_path / "b", fast_acks=True)]
    for side in sides:
        open_control_stream(side)
    start = float(int(max(side.pair.now for side in sides)) + 1)
    window = min(side.server._loss._cc.congestion_window for side in sides)
    for side in sides:
        side.server._loss._cc.congestion_window = window
        side.base = side.server._packet_number
        side.client_base = side.client._packet_number
    reference = ReferenceClient(sides[0])
    cheap = CheapClient(sides[1], start)
    in_c = path == "C"
    assert (cheap.listener._opener is not None) == (cheap.listener._sealer is not None) == in_c
    assert (cheap.fleet.receiver is not None) == in_c
    clients: list[Any] = [reference, cheap]
    to_client: list[list[bytes]] = [[], []]
    to_server: list[list[bytes]] = [[], []]
    sent_by_client = [0, 0]
    for tick in range(1, 1900):
        now = start + tick * TICK
        for index, (side, client) in enumerate(zip(sides, clients, strict=True)):
            # What was sent last tick arrives now (one tick each way).
            for packet in to_server[index]:
                side.server_receives(packet, now)
            replies: list[bytes] = []
            for packet in to_client[index]:
                replies += client.receive(packet, now)
            replies += client.timer(now)
            sent_by_client[index] += len(replies)
            to_server[index] = replies
            wire: list[bytes] = []
            if tick % 3 == 0:  # a 20 ms frame is about 2.56 ticks: one every 23.4 ms
                wire += side.send(media_datagram(5, 0x1234, 0, tick, ns(now)), now)
            if tick % 200 == 100:  # a room event on the control stream
                side.server.send_stream_data(0, b"event %d" % tick)
            wire += side.server_timer(now)
            to_client[index] = [] if lost_on_the_way(tick) else wire
        assert sides[1].state() == sides[0].state(), f"after tick {tick}"
        if tick == 1200:
            # Without losses, only the ACK-state PING gets the client's ACKs acknowledged.
            assert cheap.listener.pings_sent >= 1
    assert sent_by_client[0] == sent_by_client[1]
    assert cheap.fleet.latencies == reference.latencies and len(reference.latencies) > 400
    assert cheap.fleet.received == [len(reference.latencies)]
    listener = cheap.listener
    # The replay exercised what matters: losses, several ACK ranges, the server's ACKs of
    # the client's PINGs, control data acknowledged at once.
    assert sides[0].lost and listener.pings_sent > 0 and listener.stream_frames >= 7
    assert listener.acks_sent > 100 and listener.undecryptable == listener.unusual == 0
    receiver = cheap.fleet.receiver
    if in_c:
        # The C loop step took the audio and built the ACKs; the rest (control data, the
        # server's ACKs, packets after a loss, the ACK-state PING) went to the Python path.
        assert receiver.in_c > 400 and receiver.acks_in_c > 100
        assert receiver.in_python > 10 and receiver.acks_in_c < listener.acks_sent


def test_varint_round_trip() -> None:
    for value in (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1):
        assert read_varint(varint(value), 0) == (value, len(varint(value)))


@pytest.mark.e2e
def test_the_fleet_measures_a_tiny_broadcast_like_the_full_clients() -> None:
    from bench.scenarios import Scenario, run_scenario

    for generator in ("fleet", "full"):
        scenario = Scenario("smoke", listeners=3, warmup=0.5, window=1.0, generator=generator)
        result = run_scenario(scenario, "salond")
        assert result.error == "", result.error
        assert result.loss <= 0.01, result.notes
        assert 0 < result.acks_per_packet < 1, result.notes
        if generator == "fleet":
            note = next(note for note in result.notes if note.startswith("listener fleet"))
            assert "undecryptable 0" in note and "unrouted 0" in note, note
            if fastpath.speedups_available():  # the C loop read the audio
                assert re.search(r"read_in_c [1-9]", note), note
