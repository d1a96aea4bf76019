"""The ACK fast path (salon.quic.ackpath) is equivalent to aioquic's receive_datagram.

Two connected pairs replay the same traffic (the same datagrams at the same simulated times,
the same packets lost on the way, the same timers): the server of one pair receives the
client's packets through aioquic's ``receive_datagram``, the other's through the ACK fast
path. After every packet both servers must agree on what is acknowledged, what was declared
lost, the RTT estimate, congestion control, timers and the received-packet bookkeeping.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
from aioquic.tls import Epoch

from bench.common import media_datagram
from bench.sansio import CLIENT_ADDR, SERVER_ADDR, Pair
from salon.quic import ackpath, fastpath
from salon.quic.ackpath import AckFastPath
from salon.quic.fastpath import DatagramFastPath
from salon.quic.protocol import CLIENT_ACK_DELAY

FRAME = 0.020


class Side:
    """One pair, its server receiving through aioquic or through the ACK fast path."""

    def __init__(self, tmp: Path, fast_acks: bool, datagrams: bool = False) -> None:
        self.pair = Pair(tmp, CLIENT_ACK_DELAY)
        self.server = self.pair.server
        self.client = self.pair.client
        self.sender = DatagramFastPath(self.server)
        self.acks = AckFastPath(self.server, accept_datagrams=datagrams) if fast_acks else None
        self.received: list[Any] = []
        self.lost: list[int] = []
        self.acked: list[int] = []
        loss = self.server._loss
        on_lost = loss._on_packets_lost
        self.base = self.server._packet_number
        self.client_base = self.client._packet_number

        def record_lost(*, packets: list[Any], **kwargs: Any) -> None:
            self.lost.extend(p.packet_number - self.base for p in packets)
            on_lost(packets=packets, **kwargs)

        loss._on_packets_lost = record_lost
        on_acked = loss._cc.on_packet_acked

        def record_acked(*, packet: Any, now: float) -> None:
            self.acked.append(packet.packet_number - self.base)
            on_acked(packet=packet, now=now)

        loss._cc.on_packet_acked = record_acked

    def send(self, data: bytes, now: float) -> list[bytes]:
        wire: list[bytes] = []
        if not self.server.fast_clean:
            self.sender.refresh()
        if self.sender.send(collections.deque((data,)), 1200, now, lambda p, a: wire.append(p)):
            for packet, _ in self.server.datagrams_to_send(now):
                wire.append(packet)
        return wire

    def client_receives(self, packets: list[bytes], now: float) -> list[bytes]:
        for packet in packets:
            self.client.receive_datagram(packet, SERVER_ADDR, now)
        while self.client.next_event() is not None:
            pass
        timer = self.client.get_timer()
        if timer is not None and timer <= now:
            self.client.handle_timer(now)
        return [packet for packet, _ in self.client.datagrams_to_send(now)]

    def server_receives(self, packet: bytes, now: float) -> None:
        if self.acks is None or not self.acks.receive(packet, CLIENT_ADDR, now):
            self.server.receive_datagram(packet, CLIENT_ADDR, now)
        while (event := self.server.next_event()) is not None:
            self.received.append(event)

    def server_timer(self, now: float) -> list[bytes]:
        timer = self.server.get_timer()
        if timer is not None and timer <= now:
            self.server.handle_timer(now)
        return [packet for packet, _ in self.server.datagrams_to_send(now)]

    def state(self) -> dict[str, Any]:
        server, base, client_base = self.server, self.base, self.client_base
        space = server._spaces[Epoch.ONE_RTT]
        loss = server._loss
        return {
            "in_flight": [number - base for number in space.sent_packets],
            "acked": list(self.acked),
            "lost": list(self.lost),
            "rtt": (
                loss._rtt_latest,
                loss._rtt_min,
                loss._rtt_smoothed,
                loss._rtt_variance,
                loss._rtt_initialized,
            ),
            "pto_count": loss._pto_count,
            "loss_detection": loss.get_loss_detection_time(amplification_limited=False),
            "timer": server.get_timer(),
            "cc": (loss._cc.bytes_in_flight, loss._cc.congestion_window, loss._cc.ssthresh),
            "largest_acked": space.largest_acked_packet - base,
            "loss_time": space.loss_time,
            "ack_eliciting_in_flight": space.ack_eliciting_in_flight,
            "expected": space.expected_packet_number - client_base,
            "largest_received": (
                space.largest_received_packet - client_base,
                space.largest_received_time,
            ),
            "ack_queue": [(r.start - client_base, r.stop - client_base) for r in space.ack_queue],
            "ack_at": space.ack_at,
            "close_at": server._close_at,
            "spin": (server._spin_bit, server._spin_highest_pn - client_base),
            "sent_since_receipt": server._ack_eliciting_sent_since_receipt,
            "events": list(self.received),
        }


def _lost_on_the_way(seq: int) -> bool:
    """Packets the network drops: a few single losses and a burst."""
    return seq % 37 == 5 or 200 <= seq < 206


@pytest.mark.parametrize("crypto", ["C", "Python"])
@pytest.mark.parametrize("datagrams", [False, True], ids=["acks", "acks+datagrams"])
def test_same_acknowledgements_losses_and_rtt_as_aioquic(
    tmp_path: Path, datagrams: bool, crypto: str, monkeypatch: pytest.MonkeyPatch
):
    """With packets opened (and sealed) by the C extension, and by Python."""
    if crypto == "C" and not fastpath.speedups_available():
        pytest.skip("the C extension was not built (test_speedups.py fails for that)")
    monkeypatch.setattr(ackpath, "C_OPEN", crypto == "C")
    monkeypatch.setattr(fastpath, "C_SEAL", crypto == "C")
    slow = Side(tmp_path / "a", fast_acks=False)
    fast = Side(tmp_path / "b", fast_acks=True, datagrams=datagrams)
    now = max(slow.pair.now, fast.pair.now)
    # The handshakes' packets differ by a byte or two (signature lengths), and slow start
    # grew the congestion windows by what was acknowledged: start both from the same one.
    window = min(slow.server._loss._cc.congestion_window, fast.server._loss._cc.congestion_window)
    slow.server._loss._cc.congestion_window = fast.server._loss._cc.congestion_window = window
    assert slow.state()["in_flight"] == fast.state()["in_flight"] == []
    for seq in range(400):
        now += FRAME
        # The client's delivery time varies, so RTT samples differ from one ACK to the next.
        delay = 0.002 + (seq % 7) * 0.003
        data = media_datagram(5, 0x1234, 0, seq, 0)
        for side in (slow, fast):
            sent = side.send(data, now) + side.server_timer(now)
            if _lost_on_the_way(seq):
                sent = []
            replies = side.client_receives(sent, now + delay)
            if seq % 50 == 49:
                # Now and then the client sends something else than ACKs: a datagram.
                side.client.send_datagram_frame(bytes([seq % 256]) * 40)
                replies += [p for p, _ in side.client.datagrams_to_send(now + delay)]
            for packet in replies:
                side.server_receives(packet, now + 2 * delay)
        assert fast.state() == slow.state(), f"after copy {seq}"
    assert fast.acks is not None
    assert (fast.acks._opener is not None) == (crypto == "C")
    # The fast path did the work: most client packets were ACK-only and applied there.
    assert fast.acks.applied >= 40 and fast.acks.applied > 3 * fast.acks.fallbacks
    if datagrams:
        assert len(fast.received) == 8  # the client's datagrams, taken by the fast path
    else:
        assert fast.acks.fallbacks >= 8  # the client's datagrams went to aioquic
    assert slow.lost and slow.acked  # the replay exercised loss detection and ACKs


def test_anything_but_an_ack_only_packet_is_left_to_aioquic(tmp_path: Path):
    side = Side(tmp_path, fast_acks=True)
    assert side.acks is not None
    packet = b"\x40" + side.server.host_cid + bytes(40)
    assert not side.acks.receive(packet, CLIENT_ADDR, side.pair.now)  # does not decrypt
    assert not side.acks.receive(b"", CLIENT_ADDR, side.pair.now)
    assert not side.acks.receive(b"\xc0" + bytes(60), CLIENT_ADDR, side.pair.now)  # long header
    side.client.send_ping(1)
    ping = side.client.datagrams_to_send(side.pair.now)[0][0]
    assert not side.acks.receive(ping, ("10.9.9.9", 1), side.pair.now)  # another address
    assert not side.acks.receive(ping, CLIENT_ADDR, side.pair.now)  # a PING frame
    assert side.acks.applied == 0


def test_acks_after_a_key_update_are_opened_with_the_new_keys(tmp_path: Path):
    """A key update keeps aioquic's first header protection key: the opener derived again
    from the new secret would be wrong, is refused by its check, and ACKs still apply."""
    side = Side(tmp_path, fast_acks=True)
    assert side.acks is not None
    now = side.pair.now
    for seq in range(8):
        now += FRAME
        for packet in side.client_receives(side.send(media_datagram(5, 1, 0, seq, 0), now), now):
            side.server_receives(packet, now)
    applied = side.acks.applied
    assert applied
    assert (side.acks._opener is not None) == fastpath.speedups_available()
    side.client.request_key_update()
    side.client.send_ping(7)
    for packet, _ in side.client.datagrams_to_send(now):
        side.server.receive_datagram(packet, CLIENT_ADDR, now)  # the server follows
    for seq in range(8, 20):
        now += FRAME
        for packet in side.client_receives(side.send(media_datagram(5, 1, 0, seq, 0), now), now):
            side.server_receives(packet, now)
    assert side.acks.applied > applied
    assert side.acks._opener is None  # refused: aioquic's decrypt_packet opens them


@pytest.mark.parametrize("enabled", [True, False])
async def test_salond_applies_listener_acks_on_the_fast_path(tmp_path: Path, enabled: bool):
    import asyncio

    from tests.conftest import run_daemon
    from tests.test_fastpath import _room_with_listeners, _speaker_datagram

    async with run_daemon(tmp_path / "state", **{"tuning.ack_fast_path": enabled}) as live:
        speaker, key, listeners = await _room_with_listeners(live, 2)
        received: list[bytes] = []
        listeners[0].on_datagram = received.append
        sent = [_speaker_datagram(key, seq) for seq in range(30)]
        for data in sent:
            speaker.send_datagram(data)
            await asyncio.sleep(0.01)
        protocols = [live.daemon.server.sessions[c.session] for c in listeners]

        def in_flight() -> list[int]:
            for protocol in protocols:
                protocol.fastpath.unload_link()  # a media link gives the state back
            return [p.quic._loss.bytes_in_flight for p in protocols]

        for _ in range(200):
            if len(received) == len(sent) and not any(in_flight()):
                break
            await asyncio.sleep(0.02)
        assert received == sent
        assert not any(in_flight())
        for protocol in protocols:
            if enabled:
                # Applied by the Python ACK path, or by the media link (salon.quic.medialink)
                # which takes over once only media flows.
                assert protocol.ackpath is not None
                assert protocol.ackpath.applied + protocol.fastpath.link_acks > 0
            else:
                assert protocol.ackpath is None
