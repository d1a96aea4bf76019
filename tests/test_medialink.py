"""The media link (salon.quic.medialink, ``MediaLink`` in C) leaves aioquic in the same state.

Two connected pairs replay the same traffic (the same datagrams at the same simulated times,
the same packets lost on the way, the same client packets, the same timers). One server sends
through the Python fast path and receives ACKs through the Python ACK path (both already held
to aioquic by tests/test_fastpath.py and tests/test_ackpath.py); the other through a loaded
``MediaLink``, which refuses what it does not do (a loss to declare, a packet that is not
ACK-only) and gives the state back to aioquic's objects for it. At every comparison the link's
state is written back and both servers must agree on everything loss recovery, congestion
control, the pacer, the idle timer and the receive bookkeeping hold; between comparisons the
link may run alone for many packets.
"""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

import pytest
from aioquic.tls import Epoch

from bench.common import media_datagram
from bench.sansio import CLIENT_ADDR, SERVER_ADDR, Pair
from salon.quic import medialink
from salon.quic.ackpath import AckFastPath
from salon.quic.fastpath import DatagramFastPath
from salon.quic.protocol import CLIENT_ACK_DELAY

pytestmark = pytest.mark.skipif(
    not medialink.available(), reason="the C extension was not built (test_speedups.py fails)"
)

FRAME = 0.020


class Side:
    """One pair; its server's media path through the link or through Python."""

    def __init__(self, tmp: Path, use_link: bool) -> None:
        self.pair = Pair(tmp, CLIENT_ACK_DELAY)
        self.server = self.pair.server
        self.client = self.pair.client
        self.sender = DatagramFastPath(self.server, media_link=use_link)
        self.acks = AckFastPath(self.server)
        self.link = self.sender.link
        self.lost: list[int] = []
        self.received: list[Any] = []
        self.refused = 0
        self.clock = 0.0
        self.base = self.server._packet_number
        self.client_base = self.client._packet_number
        loss = self.server._loss
        on_lost = loss._on_packets_lost

        def record_lost(*, packets: list[Any], **kwargs: Any) -> None:
            self.lost.extend(p.packet_number - self.base for p in packets)
            on_lost(packets=packets, **kwargs)

        loss._on_packets_lost = record_lost

    @property
    def loaded(self) -> bool:
        return self.link is not None and bool(self.link.active)

    def send(self, data: bytes, now: float) -> list[bytes]:
        """What ServerProtocol.transmit does with one queued datagram."""
        queue = collections.deque((data,))
        wire: list[bytes] = []
        if not self.loaded:
            if not self.server.fast_clean and (
                not self.sender.refresh() or self.sender.ack_due(now)
            ):
                self._move(queue)
                return [p for p, _ in self.server.datagrams_to_send(now)]
            if self.sender.link_wanted:
                self.sender.load_link()
        if self.loaded:
            addrs: list[Any] = []
            result, _sent, _dropped, _armed = self.link.send(queue, 1200, now, wire, addrs)
            assert all(addr == CLIENT_ADDR for addr in addrs)
            if result == medialink.FALLBACK:
                self._move(queue)
                wire += [p for p, _ in self.server.datagrams_to_send(now)]
            return wire
        if self.sender.send(queue, 1200, now, lambda p, a: wire.append(p)):
            self._move(queue)
            wire += [p for p, _ in self.server.datagrams_to_send(now)]
        return wire

    def _move(self, queue: collections.deque[bytes]) -> None:
        while queue:
            self.server.send_datagram_frame(queue.popleft())

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
        if self.loaded:
            if self.link.receive(packet, CLIENT_ADDR, now) == medialink.APPLIED:
                return
            self.refused += 1
            self.sender.unload_link()
        if self.acks.receive(packet, CLIENT_ADDR, now):
            if not self.sender.clean_after_ack():
                self.server.fast_clean = False
        else:
            self.server.receive_datagram(packet, CLIENT_ADDR, now)
        while (event := self.server.next_event()) is not None:
            self.received.append(event)

    def timer(self) -> float | None:
        """When the server's timer is due: the link's own answer while it holds the state."""
        return self.link.timer() if self.loaded else self.server.get_timer()

    def server_timer(self, now: float) -> list[bytes]:
        timer = self.timer()
        if timer is not None and timer <= now:
            self.server.handle_timer(now)  # gives the state back first
            return [packet for packet, _ in self.server.datagrams_to_send(now)]
        return []

    def state(self) -> dict[str, Any]:
        self.sender.unload_link()
        server, base, client_base = self.server, self.base, self.client_base
        space = server._spaces[Epoch.ONE_RTT]
        loss = server._loss
        cc = loss._cc
        monitor = cc._rtt_monitor
        pacer = loss._pacer
        return {
            "packet_number": server._packet_number - base,
            "in_flight": [
                (number - base, packet.sent_time, packet.sent_bytes > 0)
                for number, packet in space.sent_packets.items()
            ],
            "lost": list(self.lost),
            "rtt": (
                loss._rtt_latest,
                loss._rtt_min,
                loss._rtt_smoothed,
                loss._rtt_variance,
                loss._rtt_initialized,
                loss._rtt_first_sample_time,
            ),
            "pto_count": loss._pto_count,
            "last_ack_eliciting": loss._time_of_last_sent_ack_eliciting_packet,
            "loss_detection": loss.get_loss_detection_time(amplification_limited=False),
            "timer": server.get_timer(),
            "cc": (
                cc.bytes_in_flight,
                cc.congestion_window,
                cc.ssthresh,
                cc._congestion_stash,
                cc._congestion_recovery_start_time,
            ),
            "monitor": (
                monitor._increases,
                monitor._ready,
                monitor._filtered_min,
                monitor._sample_idx,
                monitor._sample_max,
                monitor._sample_min,
                monitor._sample_time,
                list(monitor._samples),
            ),
            "pacer": (
                pacer.bucket_max,
                pacer.bucket_time,
                pacer.evaluation_time,
                pacer.packet_time,
            ),
            "largest_acked": space.largest_acked_packet - base,
            "loss_time": space.loss_time,
            "ack_eliciting_in_flight": space.ack_eliciting_in_flight,
            "expected": space.expected_packet_number - client_base,
            "largest_received": (
                space.largest_received_packet - client_base,
                space.largest_received_time,
            ),
            "ack_queue": [(r.start - client_base, r.stop - client_base) for r in space.ack_queue],
            "received_window": sorted(n - client_base for n in space.received_packets._received),
            "ack_at": space.ack_at,
            "close_at": server._close_at,
            "spin": (server._spin_bit, server._spin_highest_pn - client_base),
            "sent_since_receipt": server._ack_eliciting_sent_since_receipt,
            "bytes_sent": server._network_paths[0].bytes_sent,
            "events": [type(event).__name__ for event in self.received],
        }


def _lost_on_the_way(scenario: str, seq: int) -> bool:
    """Packets the network drops: a few single losses and a burst in "losses", 30% (a fixed
    pseudo-random pattern) for a while in "heavy loss", none in "slow start"."""
    if scenario == "heavy loss":
        return 100 <= seq < 300 and (seq * 7919) % 10 < 3
    return scenario == "losses" and (seq % 37 == 5 or 200 <= seq < 206)


def _client_delay(scenario: str, seq: int) -> float:
    """The client's delivery time varies (RTT samples differ); in "slow start" it grows
    steadily for a while, which ends slow start through Reno's RTT monitor, not a loss."""
    if scenario == "slow start" and seq >= 100:
        # Up by 1 ms a packet, then down by 10 ms (the client's clock never goes back).
        return max(0.002, 0.002 + min(seq - 100, 200) * 0.001 - max(0, seq - 300) * 0.01)
    return 0.002 + (seq % 7) * 0.003


def _pairs(tmp: Path) -> tuple[Side, Side]:
    python = Side(tmp / "a", use_link=False)
    linked = Side(tmp / "b", use_link=True)
    # The handshakes' packets differ by a byte or two (signature lengths), and slow start
    # grew the congestion windows by what was acknowledged: start both from the same one.
    window = min(
        python.server._loss._cc.congestion_window, linked.server._loss._cc.congestion_window
    )
    python.server._loss._cc.congestion_window = linked.server._loss._cc.congestion_window = window
    for side in (python, linked):
        loss = side.server._loss
        loss._pacer.update_rate(congestion_window=window, smoothed_rtt=loss._rtt_smoothed)
        loss._pacer.bucket_time = loss._pacer.bucket_max
    return python, linked


@pytest.mark.parametrize("scenario", ["losses", "heavy loss", "slow start"])
@pytest.mark.parametrize("compare_every", [1, 25])
def test_same_state_as_the_python_paths(tmp_path: Path, compare_every: int, scenario: str):
    python, linked = _pairs(tmp_path)
    now = max(python.pair.now, linked.pair.now)
    assert python.state() == linked.state()
    for seq in range(500):
        now += FRAME
        delay = _client_delay(scenario, seq)
        data = media_datagram(5, 0x1234, 0, seq, 0)
        for side in (python, linked):
            # The server's clock never goes back: its replies may have arrived "later" than
            # this send when the client's delay is long.
            at = side.clock = max(side.clock, now)
            sent = side.send(data, at) + side.server_timer(at)
            if _lost_on_the_way(scenario, seq):
                sent = []
            replies = side.client_receives(sent, at + delay)
            if seq % 50 == 49:
                # Now and then the client sends something else than ACKs: a datagram, which
                # the server must acknowledge (an ACK timer, then aioquic's writer).
                side.client.send_datagram_frame(bytes([seq % 256]) * 40)
                replies += [p for p, _ in side.client.datagrams_to_send(at + delay)]
            side.clock = at + 2 * delay
            for packet in replies:
                side.server_receives(packet, side.clock)
        assert linked.timer() == python.timer(), f"timer after copy {seq}"
        if seq % compare_every == compare_every - 1:
            assert linked.state() == python.state(), f"after copy {seq}"
    assert linked.state() == python.state()
    # The link did the work: it applied most ACKs and sent most packets itself, and it
    # refused (the losses, the client's datagrams) what aioquic had to do.
    assert linked.sender.link_acks >= 30
    assert linked.sender.link_loads >= 5
    assert linked.refused >= 8
    assert python.lost == linked.lost
    assert python.server._loss._cc.ssthresh is not None  # slow start ended during the replay
    if scenario != "slow start":
        assert python.lost
    else:
        # The RTT monitor ended slow start (ssthresh = the window then), not a loss.
        assert not python.lost and python.server._loss._cc._rtt_monitor._increases >= 5


def test_refuses_without_changing_anything(tmp_path: Path):
    """Packets the link does not apply leave its state as it was."""
    side = Side(tmp_path, use_link=True)
    now = side.pair.now + 1
    side.send(media_datagram(5, 0x1234, 0, 1, 0), now)
    assert side.loaded
    before = side.link.sent_packets(), side.link.timer(), side.link.expected_packet_number
    packet = b"\x40" + side.server.host_cid + bytes(40)
    assert side.link.receive(packet, CLIENT_ADDR, now) == medialink.REFUSED  # not authentic
    assert side.link.receive(b"", CLIENT_ADDR, now) == medialink.REFUSED
    assert side.link.receive(b"\xc0" + bytes(60), CLIENT_ADDR, now) == medialink.REFUSED
    side.client.send_ping(1)
    ping = side.client.datagrams_to_send(now)[0][0]
    assert side.link.receive(ping, ("10.9.9.9", 1), now) == medialink.REFUSED  # another address
    assert side.link.receive(ping, CLIENT_ADDR, now) == medialink.REFUSED  # a PING frame
    assert (side.link.sent_packets(), side.link.timer(), side.link.expected_packet_number) == before
    assert side.link.acks_applied == 0


def test_calls_into_aioquic_take_the_state_back(tmp_path: Path):
    """Every public method of the connection writes the link's state back first."""
    side = Side(tmp_path, use_link=True)
    now = side.pair.now + 1
    side.send(media_datagram(5, 0x1234, 0, 1, 0), now)
    assert side.loaded
    assert not side.server._spaces[Epoch.ONE_RTT].sent_packets  # held by the link
    side.server.send_ping(7)
    assert not side.loaded
    assert len(side.server._spaces[Epoch.ONE_RTT].sent_packets) == 1
    side.server.fast_clean = True
    assert side.sender.load_link()
    timer = side.link.timer()
    assert side.server.get_timer() == timer  # read-only, yet it gives the state back
    assert not side.loaded


def test_nan_and_none_round_trip(tmp_path: Path):
    """Fields aioquic keeps as None (no loss time, no ACK due, no RTT monitor minimum) come
    back as None, and infinities (no RTT minimum yet) as infinities."""
    side = Side(tmp_path, use_link=True)
    loss = side.server._loss
    loss._rtt_min = math.inf
    side.send(media_datagram(5, 0x1234, 0, 1, 0), side.pair.now + 1)
    assert side.loaded
    side.sender.unload_link()
    space = side.server._spaces[Epoch.ONE_RTT]
    assert space.loss_time is None and space.ack_at is None
    assert loss._rtt_min == math.inf
    assert loss._cc._rtt_monitor._filtered_min is None or loss._cc._rtt_monitor._ready


class _Connection:
    """What ``flush_links`` reads of a server connection."""

    def __init__(self, media_link: Any, closed: bool = False) -> None:
        self.media_link = media_link
        self.closed = closed


def test_flush_links_sends_through_loaded_links_and_returns_the_rest(tmp_path: Path):
    side = Side(tmp_path, use_link=True)
    now = side.pair.now + 1
    side.send(media_datagram(5, 0x1234, 0, 1, 0), now)  # loads the link, a packet in flight
    assert side.loaded
    link = side.link
    link.queue = collections.deque(media_datagram(5, 0x1234, 0, n, 0) for n in (2, 3))
    link.limit = 1200
    linked = _Connection(link)
    without = _Connection(None)
    peer = object()  # a cluster peer: no media_link at all
    packets: list[bytes] = []
    addrs: list[Any] = []
    rest, sent = medialink.flush_links([linked, without, peer], now + 0.02, packets, addrs)
    assert rest == [without, peer]
    assert sent == 2 and not link.queue
    assert len(packets) == 1 and addrs == [CLIENT_ADDR]  # both datagrams in one packet
    # The client opens it: the link's packet is a packet of the connection.
    side.client.receive_datagram(packets[0], SERVER_ADDR, now + 0.03)
    got = []
    while (event := side.client.next_event()) is not None:
        got.append(getattr(event, "data", None))
    assert [media_datagram(5, 0x1234, 0, n, 0) for n in (2, 3)] == [d for d in got if d]
    # A closed connection, or a link not loaded, is left to the connection's own transmit.
    link.queue.append(media_datagram(5, 0x1234, 0, 4, 0))
    closed = _Connection(link, closed=True)
    rest, sent = medialink.flush_links([closed], now + 0.04, packets, addrs)
    assert rest == [closed] and sent == 0 and len(link.queue) == 1
    side.sender.unload_link()
    rest, sent = medialink.flush_links([linked], now + 0.04, packets, addrs)
    assert rest == [linked] and sent == 0


@pytest.mark.parametrize("enabled", [True, False])
async def test_salond_sends_and_applies_acks_through_the_link(tmp_path: Path, enabled: bool):
    import asyncio

    from tests.conftest import run_daemon
    from tests.test_fastpath import _room_with_listeners, _speaker_datagram

    async with run_daemon(tmp_path / "state", **{"tuning.media_link": enabled}) as live:
        speaker, key, listeners = await _room_with_listeners(live, 3)
        received: dict[int, list[bytes]] = {id(c): [] for c in listeners}
        for client in listeners:
            client.on_datagram = received[id(client)].append
        sent = [_speaker_datagram(key, seq) for seq in range(40)]
        for data in sent:
            speaker.send_datagram(data)
            await asyncio.sleep(0.01)
        protocols = [live.daemon.server.sessions[c.session] for c in listeners]

        def settled() -> bool:
            for protocol in protocols:
                protocol.fastpath.unload_link()  # aioquic's objects hold the state again
            return all(len(got) == len(sent) for got in received.values()) and all(
                p.quic._loss.bytes_in_flight == 0 for p in protocols
            )

        for _ in range(200):
            if settled():
                break
            await asyncio.sleep(0.02)
        assert all(got == sent for got in received.values())
        assert settled()  # everything sent was acknowledged
        for protocol in protocols:
            fast = protocol.fastpath
            if enabled:
                assert protocol.media_link is not None and fast.link_loads > 0
                assert fast.link_packets > 0 and fast.link_acks > 0
            else:
                assert protocol.media_link is None and fast.link_packets == 0


def _varints(*values: int) -> bytes:
    from aioquic.buffer import Buffer

    buf = Buffer(capacity=8 * len(values) + 8)
    for value in values:
        buf.push_uint_var(value)
    return buf.data


def _client_packet(side: Side, payload: bytes) -> bytes:
    """A 1-RTT packet from the side's client with this payload (any bytes), sealed with the
    client's own keys: what a hostile client can send."""
    client = side.client
    number = client._packet_number
    client._packet_number += 1
    crypto = client._cryptos[Epoch.ONE_RTT]
    first = 0x40 | (crypto.key_phase << 2) | 1
    header = bytes((first,)) + client._peer_cid.cid + (number & 0xFFFF).to_bytes(2, "big")
    payload = payload + bytes(max(0, 24 - len(payload)))  # PADDING up to a sample's length
    return crypto.send.encrypt_packet(header, payload, number)


HOSTILE = [
    "acknowledges packets never sent",
    "an absurd ACK delay",
    "a range below packet number 0",
    "a gap below packet number 0",
    "more ranges than the link takes",
    "ranges announced, missing",
    "ACK_ECN with its counts",
    "an ACK of the newest only (a loss to declare)",
    "two ACK frames",
    "ACK and PING",
    "a frame type and nothing else",
    "ACK's type in a two-byte encoding",
]


def _hostile_payload(side: Side, name: str) -> bytes:
    """An ACK frame a well-behaved client never sends, relative to the server's packets."""
    top = (side.link.next_packet_number if side.loaded else side.server._packet_number) - 1
    return {
        "acknowledges packets never sent": _varints(2, top + 50, 0, 0, 0),
        "an absurd ACK delay": _varints(2, top, 10**15, 0, 0),
        "a range below packet number 0": _varints(2, top, 0, 0, top + 5),
        "a gap below packet number 0": _varints(2, top, 0, 1, 0, top, 0),
        "more ranges than the link takes": _varints(2, top, 0, 70, 0, *([0, 0] * 70)),
        "ranges announced, missing": _varints(2, top, 0, 3, 0),
        "ACK_ECN with its counts": _varints(3, top, 0, 0, top, 1, 2, 3),
        "an ACK of the newest only (a loss to declare)": _varints(2, top, 0, 0, 0),
        "two ACK frames": _varints(2, top, 0, 0, 0, 2, top, 0, 0, 0),
        "ACK and PING": _varints(2, top, 0, 0, 0, 1),
        "a frame type and nothing else": b"\x02",
        "ACK's type in a two-byte encoding": _varints(0x4002, top, 0, 0, 0),
    }[name]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_ack_frames_leave_the_same_state(tmp_path: Path, name: str):
    """A malformed or absurd ACK frame from the client: the link applies or refuses it, and
    either way the connection ends as with the Python paths and aioquic (which may close it)."""
    python, linked = _pairs(tmp_path)
    now = max(python.pair.now, linked.pair.now)
    for seq in range(20):
        now += FRAME
        for side in (python, linked):
            sent = side.send(media_datagram(5, 0x1234, 0, seq, 0), now)
            for packet in side.client_receives(sent, now + 0.005):
                side.server_receives(packet, now + 0.01)
    now += FRAME
    for side in (python, linked):
        side.send(media_datagram(5, 0x1234, 0, 100, 0), now)
    assert linked.loaded  # the hostile packet reaches the link
    linked.sender.unload_link()
    linked.sender.load_link()
    applied, refused = linked.sender.link_acks, linked.refused
    for side in (python, linked):
        side.server_receives(_client_packet(side, _hostile_payload(side, name)), now + 0.01)
    assert linked.state() == python.state()  # (the link's counts are added at the unload)
    applied = linked.sender.link_acks - applied
    refused = linked.refused - refused
    # What the link can do exactly as aioquic is applied in C, the rest refused. (A lone
    # frame type is padded with zeros: an ACK of packet 0.)
    applies = {
        "acknowledges packets never sent",
        "ACK_ECN with its counts",
        "a frame type and nothing else",
    }
    assert (applied, refused) == ((1, 0) if name in applies else (0, 1))
