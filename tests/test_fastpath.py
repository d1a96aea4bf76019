"""The datagram fast path against a real aioquic peer.

Most tests drive two aioquic connections in memory (the aioquic test style: a client and a
server ``QuicConnection``, packets moved by hand, the clock passed in): the server's datagrams
go out through :class:`DatagramFastPath`, the client is stock aioquic. The last tests run the
fast path inside salond over real QUIC on loopback.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import aioquic
import pytest
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from salon.daemon.tls import ensure_certificate
from salon.daemon.wire.datagram import pack_datagram
from salon.daemon.wire.rtp import (
    AUDIO_LEVEL_EXTENSION_ID,
    HeaderExtension,
    RtpPacket,
    pack_audio_level,
)
from salon.quic import AIOQUIC_VERSION
from salon.quic import fastpath as fp
from salon.quic.ackpath import AckFastPath
from salon.quic.fastpath import DatagramFastPath, FastQuicConnection, SendResult

CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("2.3.4.5", 4433)


class Pair:
    """A connected client (stock aioquic) and server (fast path) with a hand-moved network."""

    def __init__(self, tmp_path: Path, ack_delay: float = 0.020) -> None:
        tls = ensure_certificate(tmp_path / "tls", "localhost")
        client_config = QuicConfiguration(
            alpn_protocols=["salon/1"], is_client=True, max_datagram_frame_size=65536
        )
        client_config.verify_mode = 0  # ssl.CERT_NONE
        server_config = QuicConfiguration(
            alpn_protocols=["salon/1"], is_client=False, max_datagram_frame_size=65536
        )
        server_config.load_cert_chain(str(tls.certificate), str(tls.private_key))
        self.now = 1000.0
        self.client = QuicConnection(configuration=client_config)
        self.client._ack_delay = ack_delay
        self.server = QuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        self.fast = DatagramFastPath(self.server)
        self.wire: list[bytes] = []
        self.client.connect(SERVER_ADDR, now=self.now)
        for _ in range(10):
            self.client_to_server()
            self.server_to_client()
        assert self.server._handshake_confirmed and self.client._handshake_confirmed
        self.client_events()
        # Let the last handshake packets be acknowledged: nothing in flight either way.
        for _ in range(3):
            self.advance(0.05)
        assert self.server._loss.bytes_in_flight == 0
        assert self.client._loss.bytes_in_flight == 0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for connection in (self.client, self.server):
            timer = connection.get_timer()
            if timer is not None and timer <= self.now:
                connection.handle_timer(self.now)
        self.client_to_server()
        self.server_to_client()

    def client_to_server(self) -> int:
        count = 0
        for data, _ in self.client.datagrams_to_send(self.now):
            self.server.receive_datagram(data, CLIENT_ADDR, self.now)
            count += 1
        return count

    def server_to_client(self) -> int:
        count = 0
        for data, _ in self.server.datagrams_to_send(self.now):
            self.client.receive_datagram(data, SERVER_ADDR, self.now)
            count += 1
        return count

    def sendto(self, data: bytes, addr: object) -> None:
        assert addr == CLIENT_ADDR
        self.wire.append(data)

    def deliver_wire(self, drop: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        for index, data in enumerate(self.wire):
            if index not in drop:
                self.client.receive_datagram(data, SERVER_ADDR, self.now)
        self.wire.clear()

    def fast_send(self, datagrams: list[bytes], limit: int = 1100) -> int:
        queue = collections.deque(datagrams)
        if not self.server.fast_clean:
            assert self.fast.refresh()
        result = self.fast.send(queue, limit, self.now, self.sendto)
        assert not queue or result != SendResult.SENT
        return result

    def client_events(self) -> list[events.QuicEvent]:
        found = []
        while (event := self.client.next_event()) is not None:
            found.append(event)
        return found

    def received(self) -> list[bytes]:
        return [e.data for e in self.client_events() if isinstance(e, events.DatagramFrameReceived)]


def media(seq: int, size: int = 81) -> bytes:
    packet = RtpPacket(
        payload_type=111,
        sequence_number=seq,
        timestamp=seq * 960,
        ssrc=0x1234,
        extensions=[HeaderExtension(AUDIO_LEVEL_EXTENSION_ID, pack_audio_level(True, 30))],
        payload=bytes([seq % 256]) * size,
    )
    return pack_datagram(1, packet.serialize())


@pytest.fixture(params=["C", "Python"], ids=["seal-C", "seal-Python"])
def pair(request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pair:
    """Every fast path test runs with packets sealed by the C extension and by Python."""
    if request.param == "C":
        if not fp.speedups_available():
            pytest.skip("the C extension was not built (test_speedups.py fails for that)")
    else:
        monkeypatch.setattr(fp, "C_SEAL", False)
    return Pair(tmp_path)


# ---------------------------------------------------------------------------------- pinning


def test_pinned_aioquic_version_and_api():
    assert aioquic.__version__ == AIOQUIC_VERSION
    public = {name for name in dir(QuicConnection) if not name.startswith("_")}
    # A new public method could change what is pending without clearing the cache.
    assert public == set(fp.INVALIDATING_METHODS) | set(fp.READ_ONLY_MEMBERS)


def test_every_state_changing_call_clears_the_cache(pair: Pair):
    server = pair.server
    assert isinstance(server, FastQuicConnection)
    stream_id = 1  # a server-initiated bidirectional stream
    calls = {
        "send_stream_data": lambda: server.send_stream_data(stream_id, b"x"),
        "send_ping": lambda: server.send_ping(7),
        "send_datagram_frame": lambda: server.send_datagram_frame(b"d"),
        "datagrams_to_send": lambda: server.datagrams_to_send(pair.now),
        "handle_timer": lambda: server.handle_timer(pair.now),
        "request_key_update": lambda: server.request_key_update(),
    }
    for name, call in calls.items():
        pair.server_to_client()
        pair.advance(0.05)
        pair.fast.refresh()
        server.fast_clean = True
        call()
        assert not server.fast_clean, name


# ---------------------------------------------------------------------------------- delivery


def test_datagrams_arrive_intact_and_several_share_a_packet(pair: Pair):
    datagrams = [media(seq) for seq in range(5)]
    assert pair.fast_send(datagrams) == SendResult.SENT
    # Five 100-byte datagrams fit one 1200-byte packet.
    assert len(pair.wire) == 1
    assert pair.fast.packets == 1
    pair.deliver_wire()
    assert pair.received() == datagrams


def test_a_full_packet_spills_into_the_next(pair: Pair):
    datagrams = [media(seq, size=400) for seq in range(7)]
    queue = collections.deque(datagrams)
    assert pair.fast.refresh()
    while queue:
        result = pair.fast.send(queue, 1100, pair.now, pair.sendto)
        # aioquic paces bursts; the fast path hands over to it (or, here, waits a little).
        assert result in (SendResult.SENT, SendResult.FALLBACK)
        pair.now += 0.001
    assert len(pair.wire) == 4  # two 420-byte datagrams per packet
    assert all(len(packet) <= pair.server._max_datagram_size for packet in pair.wire)
    pair.deliver_wire()
    assert pair.received() == datagrams


def test_oversized_and_over_limit_datagrams_are_dropped_not_stuck(pair: Pair):
    big = b"\x01" + bytes(1190)  # cannot fit in a 1200-byte packet
    over_limit = media(1, size=300)
    ok = media(2)
    assert pair.fast_send([big, over_limit, ok], limit=200) == SendResult.SENT
    assert pair.fast.dropped == 2
    pair.deliver_wire()
    assert pair.received() == [ok]


def test_aes_called_directly_builds_aioquic_s_exact_bytes(pair: Pair):
    """DatagramFastPath.protect (AES-GCM and header protection in C, or through cryptography)
    gives the bytes of aioquic's CryptoContext.encrypt_packet, packet number by packet number."""
    from aioquic.tls import Epoch

    assert pair.fast.refresh() and pair.fast._seal is not None
    assert (pair.fast._sealer is not None) == fp.C_SEAL
    crypto = pair.server._cryptos[Epoch.ONE_RTT].send
    start = bytes((pair.fast._first_byte,)) + pair.server._peer_cid.cid
    for packet_number in (0, 1, 255, 256, 0xFFFF, 0x10000, 123456):
        header = start + (packet_number & 0xFFFF).to_bytes(2, "big")
        payload = bytes([packet_number % 251]) * 97
        assert pair.fast.protect(header, payload, packet_number) == crypto.encrypt_packet(
            header, payload, packet_number
        )


def test_packet_numbers_continue_aioquic_sequence(pair: Pair):
    before = pair.server._packet_number
    pair.fast_send([media(1)])
    assert pair.server._packet_number == before + 1
    pair.deliver_wire()
    # aioquic's own next packet (control data) follows the fast one without a gap.
    pair.server.send_stream_data(1, b"hello")
    pair.server_to_client()
    assert pair.server._packet_number == before + 2
    assert [e.data for e in pair.client_events() if isinstance(e, events.StreamDataReceived)] == [
        b"hello"
    ]


def test_packet_numbers_past_0xffff_decode_and_are_acknowledged(pair: Pair):
    """The fast path writes 2-byte packet numbers: past 0xFFFF the peer must still recover
    the full number (for the AEAD nonce and its ACKs) from the truncated one."""
    # Skipping packet numbers is allowed (RFC 9000 12.3); it saves sending 65,000 packets.
    pair.server._packet_number = 0xFFF0
    space = pair.server._spaces[fp.ONE_RTT]
    heard: list[bytes] = []
    sent = [media(seq) for seq in range(40)]
    for datagram in sent:
        assert pair.fast_send([datagram]) == SendResult.SENT
        pair.deliver_wire()
        heard += pair.received()
        pair.advance(0.005)
    assert pair.server._packet_number > 0x10010
    assert heard == sent
    pair.advance(0.05)  # the client's ACKs name the full numbers: all in-flight is cleared
    assert space.sent_packets == {}
    assert pair.server._loss.bytes_in_flight == 0


# ---------------------------------------------------------------------------------- ACKs, cc


def _recovery_state(pair: Pair) -> dict[str, Any]:
    server = pair.server
    loss = server._loss
    pacer = loss._pacer
    space = server._spaces[fp.ONE_RTT]
    return {
        "bytes_in_flight": loss._cc.bytes_in_flight,
        "ack_eliciting_in_flight": space.ack_eliciting_in_flight,
        "last_ack_eliciting": loss._time_of_last_sent_ack_eliciting_packet,
        "pacer": (pacer.bucket_time, pacer.evaluation_time, pacer.packet_time),
        "loss_detection": loss.get_loss_detection_time(amplification_limited=False),
        "sent": [
            (
                number,
                packet.epoch,
                packet.in_flight,
                packet.is_ack_eliciting,
                packet.is_crypto_packet,
                packet.packet_number,
                packet.packet_type,
                packet.sent_time,
                packet.sent_bytes,
                list(packet.delivery_handlers),
                list(packet.quic_logger_frames),
            )
            for number, packet in space.sent_packets.items()
        ],
        "packet_number": server._packet_number,
        "close_at": server._close_at,
    }


def test_inlined_recovery_bookkeeping_matches_aioquic_s(tmp_path: Path):
    """send() records its packets in loss recovery, congestion control and the pacer itself
    (Reno only): the state must be what aioquic's on_packet_sent and pacer calls make."""
    inlined, called = Pair(tmp_path), Pair(tmp_path)
    for pair in (inlined, called):
        assert pair.fast.refresh()
    assert inlined.fast._inline_recovery
    called.fast._inline_recovery = False
    # The handshakes' sizes differ by a few bytes (signatures): start from the same window.
    source, target = inlined.server._loss, called.server._loss
    for name in ("bucket_max", "bucket_time", "evaluation_time", "packet_time"):
        setattr(target._pacer, name, getattr(source._pacer, name))
    target._cc.congestion_window = source._cc.congestion_window
    for seq in range(9):
        for pair in (inlined, called):
            # Two full packets per send: the pacer's bucket empties (down to a send left to
            # aioquic) and refills partly or wholly between sends.
            pair.now += (0.0, 0.0001, 0.003)[seq % 3]
            pair.fast_send([media(seq, 900), media(seq + 100, 900)])
        assert _recovery_state(inlined) == _recovery_state(called)
    assert inlined.server._loss._pacer.packet_time is not None  # the pacer was exercised
    # A fast packet's record is what aioquic's own writer makes for a datagram packet.
    called.server.send_datagram_frame(media(99))
    assert called.server.datagrams_to_send(called.now)
    space = called.server._spaces[fp.ONE_RTT]
    *_, fast_number, aioquic_number = space.sent_packets
    assert _record(space.sent_packets[fast_number]) == _record(space.sent_packets[aioquic_number])


def _record(packet: Any) -> tuple[Any, ...]:
    return (
        packet.epoch,
        packet.in_flight,
        packet.is_ack_eliciting,
        packet.is_crypto_packet,
        packet.packet_type,
        list(packet.delivery_handlers),
        list(packet.quic_logger_frames),
    )


def test_acks_clear_what_the_fast_path_put_in_flight(pair: Pair):
    loss = pair.server._loss
    space = pair.server._spaces[fp.ONE_RTT]
    base = loss.bytes_in_flight
    assert pair.fast_send([media(1)]) == SendResult.SENT
    pair.now += 0.005
    assert pair.fast_send([media(2)]) == SendResult.SENT
    sent = sum(len(packet) for packet in pair.wire)
    assert loss.bytes_in_flight == base + sent
    assert space.ack_eliciting_in_flight >= 2
    pair.deliver_wire()
    pair.received()
    pair.advance(0.025)  # past the client's ACK delay: its ACK reaches the server
    assert loss.bytes_in_flight == 0
    assert space.sent_packets == {}
    assert loss._pto_count == 0


def test_loss_of_a_fast_packet_is_detected_by_aioquic(pair: Pair):
    loss = pair.server._loss
    for seq in range(5):
        assert pair.fast_send([media(seq)]) == SendResult.SENT
        pair.now += 0.005  # audio pace: one packet every few milliseconds
    pair.deliver_wire(drop={0})
    pair.advance(0.025)
    # Later packets were acknowledged: the first is declared lost (packet threshold) and
    # no longer counts in flight; DATAGRAM frames are not retransmitted.
    assert loss.bytes_in_flight == 0
    assert pair.server._spaces[fp.ONE_RTT].sent_packets == {}


def _fast_acks_back(pair: Pair, ack_path: AckFastPath) -> None:
    """Let the client's delayed ACK go out and apply it on the server's ACK fast path."""
    pair.now += 0.025
    timer = pair.client.get_timer()
    if timer is not None and timer <= pair.now:
        pair.client.handle_timer(pair.now)
    replies = pair.client.datagrams_to_send(pair.now)
    assert replies
    for data, _ in replies:
        assert ack_path.receive(data, CLIENT_ADDR, pair.now)


def test_a_fast_ack_keeps_the_check_only_over_fast_packets(pair: Pair):
    """After an ACK of nothing but fast packets the cached check still holds (salond skips
    the full check); with a stream packet in flight it does not, and when the ACK declares
    that packet lost the fresh check sees the data to resend and aioquic resends it."""
    ack_path = AckFastPath(pair.server)
    for seq in range(3):
        pair.now += 0.005
        assert pair.fast_send([media(seq)]) == SendResult.SENT
    pair.deliver_wire()
    pair.received()
    _fast_acks_back(pair, ack_path)
    assert pair.server._loss.bytes_in_flight == 0
    assert pair.fast.clean_after_ack()
    # The cached header follows the client's spin bit as a full check would.
    first_byte = pair.fast._first_byte
    assert pair.fast.refresh() and pair.fast._first_byte == first_byte

    pair.server.send_stream_data(1, b"hello")
    lost = pair.server.datagrams_to_send(pair.now)  # never reaches the client
    assert lost
    for seq in range(3, 7):
        pair.now += 0.005  # audio pace (the pacer holds back a burst)
        assert pair.fast_send([media(seq)]) == SendResult.SENT
    pair.deliver_wire()
    pair.received()
    _fast_acks_back(pair, ack_path)
    assert not pair.fast.clean_after_ack()
    assert not pair.fast.refresh()  # the lost stream data waits to be resent
    pair.server_to_client()
    assert [e.data for e in pair.client_events() if isinstance(e, events.StreamDataReceived)] == [
        b"hello"
    ]


def test_full_congestion_window_blocks_and_keeps_the_queue(pair: Pair):
    cc = pair.server._loss._cc
    cc.bytes_in_flight = cc.congestion_window - 50
    queue = collections.deque([media(1), media(2)])
    pair.fast.refresh()
    assert pair.fast.send(queue, 1100, pair.now, pair.sendto) == SendResult.BLOCKED
    assert len(queue) == 2 and not pair.wire
    cc.bytes_in_flight = 0
    assert pair.fast.send(queue, 1100, pair.now, pair.sendto) == SendResult.SENT
    assert not queue


def test_first_packet_in_flight_asks_for_the_pto_timer(pair: Pair):
    assert pair.fast_send([media(1)]) == SendResult.SENT
    assert pair.fast.armed_pto
    pair.now += 0.005
    assert pair.fast_send([media(2)]) == SendResult.SENT
    assert not pair.fast.armed_pto
    # aioquic's timer now covers the probe timeout of what the fast path sent.
    timer = pair.server.get_timer()
    assert timer is not None and timer < pair.now + 1.0


def test_probe_timeout_after_unanswered_fast_packets(pair: Pair):
    pair.fast_send([media(1)])
    pair.wire.clear()  # lost
    timer = pair.server.get_timer()
    assert timer is not None
    pair.now = timer
    pair.server.handle_timer(pair.now)
    assert not pair.server.fast_clean
    assert not pair.fast.refresh()  # a probe is pending: the normal path sends it
    probes = pair.server_to_client()
    assert probes >= 1
    assert pair.server._loss._pto_count == 1


# ---------------------------------------------------------------------------------- fallback


def test_pacing_hands_the_rest_to_aioquic(pair: Pair):
    queue = collections.deque(media(seq, size=1000) for seq in range(10))
    assert pair.fast.refresh()
    assert pair.fast.send(queue, 1100, pair.now, pair.sendto) == SendResult.FALLBACK
    assert 0 < len(queue) < 10
    assert pair.server._loss._pacer.next_send_time(pair.now) is not None


def test_refresh_refuses_while_other_frames_are_pending(pair: Pair):
    server = pair.server
    server.send_stream_data(1, b"control")
    assert not pair.fast.refresh()
    pair.server_to_client()
    assert pair.fast.refresh()
    server.send_ping(1)
    assert not pair.fast.refresh()
    pair.server_to_client()
    pair.client_to_server()
    assert pair.fast.refresh()


def test_ack_due_sends_through_aioquic(pair: Pair):
    # The client sends something ack-eliciting: the server owes an ACK 1 ms later.
    pair.client.send_datagram_frame(b"from client")
    pair.client_to_server()
    assert pair.fast.refresh()
    assert not pair.fast.ack_due(pair.now)
    later = pair.now + 0.002
    assert pair.fast.ack_due(later)
    queue = collections.deque([media(1)])
    assert pair.fast.send(queue, 1100, later, pair.sendto) == SendResult.FALLBACK
    assert len(queue) == 1


def test_datagram_held_by_aioquic_forces_the_normal_path(pair: Pair):
    pair.fast.refresh()
    pair.server._datagrams_pending.append(b"aioquic's own")
    queue = collections.deque([media(1)])
    assert pair.fast.send(queue, 1100, pair.now, pair.sendto) == SendResult.FALLBACK
    assert not pair.fast.refresh()


def test_closing_connection_never_takes_the_fast_path(pair: Pair):
    pair.server.close(error_code=0, reason_phrase="bye")
    assert not pair.fast.refresh()


def test_key_update_is_followed(pair: Pair):
    pair.client.request_key_update()
    pair.client.send_ping(3)
    pair.client_to_server()  # the server follows the client's new key phase
    pair.server_to_client()
    assert pair.fast.refresh()
    pair.fast_send([media(9)])
    pair.deliver_wire()
    assert pair.received() == [media(9)]


def test_switched_off_on_another_aioquic(monkeypatch: pytest.MonkeyPatch):
    assert fp.supported()
    monkeypatch.setattr(aioquic, "__version__", "0.0.0")
    assert not fp.supported()


# ---------------------------------------------------------------------------------- in salond


async def _room_with_listeners(live, listeners: int):
    speaker = await live.client("Speaker")
    await speaker.create_room("Fast", room="fast")
    await speaker.join("fast")
    from salon.daemon.wire import messages as msg

    state = await speaker.wait_for_event(msg.RoomState)
    key = next(k for k in state.room.media_keys if k.user == speaker.user)
    await speaker.call("unmute")
    clients = []
    for index in range(listeners):
        client = await live.client(f"L{index}")
        await client.join("fast")
        clients.append(client)
    return speaker, key, clients


def _speaker_datagram(key, seq: int) -> bytes:
    packet = RtpPacket(
        payload_type=111,
        sequence_number=seq,
        timestamp=seq * 960,
        ssrc=key.ssrc,
        extensions=[HeaderExtension(AUDIO_LEVEL_EXTENSION_ID, pack_audio_level(True, 30))],
        payload=bytes(97),
    )
    return pack_datagram(key.flow_id, packet.serialize())


async def test_salond_forwards_through_the_fast_path(live):
    speaker, key, listeners = await _room_with_listeners(live, 3)
    received: dict[int, list[bytes]] = {id(c): [] for c in listeners}
    for client in listeners:
        client.on_datagram = received[id(client)].append
    sent = [_speaker_datagram(key, seq) for seq in range(40)]
    for data in sent:
        speaker.send_datagram(data)
        await asyncio.sleep(0.005)
    for _ in range(100):
        if all(len(got) == len(sent) for got in received.values()):
            break
        await asyncio.sleep(0.02)
    assert all(got == sent for got in received.values())
    server = live.daemon.server
    protocols = [server.sessions[c.session] for c in listeners]

    def unload() -> None:
        for protocol in protocols:
            protocol.fastpath.unload_link()  # a media link gives the state back to aioquic

    unload()
    assert all(p.fastpath is not None and p.fastpath.packets > 0 for p in protocols)
    # Every copy was acknowledged in the end (the listeners delay their ACKs, see
    # CLIENT_ACK_DELAY), and no probe timeout fired.
    for _ in range(100):
        unload()
        if all(p._quic._loss.bytes_in_flight == 0 for p in protocols):
            break
        await asyncio.sleep(0.02)
    unload()
    for protocol in protocols:
        loss = protocol._quic._loss
        assert loss.bytes_in_flight == 0
        assert loss._pto_count == 0


async def test_salond_without_the_fast_path(live, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(live.daemon.server, "fast_path", False)  # as tuning.fast_path = false
    speaker, key, listeners = await _room_with_listeners(live, 2)
    received: list[bytes] = []
    listeners[0].on_datagram = received.append
    sent = [_speaker_datagram(key, seq) for seq in range(10)]
    for data in sent:
        speaker.send_datagram(data)
        await asyncio.sleep(0.005)
    for _ in range(100):
        if len(received) == len(sent):
            break
        await asyncio.sleep(0.02)
    assert received == sent
    assert live.daemon.server.sessions[listeners[0].session].fastpath is None


async def test_media_flush_interval_packs_what_arrives_within_it(
    live, monkeypatch: pytest.MonkeyPatch
):
    """tuning.media_flush_interval: media arriving sooner than the interval after the last
    flush of media waits for its end (and goes out with what arrived meanwhile)."""
    server = live.daemon.server
    interval = 0.05
    monkeypatch.setattr(server, "_media_flush_interval", interval)
    speaker, key, listeners = await _room_with_listeners(live, 1)
    received: list[bytes] = []
    listeners[0].on_datagram = received.append
    sent = [_speaker_datagram(key, seq) for seq in range(4)]
    loop = asyncio.get_running_loop()
    # A datagram after a quiet spell (a speaker alone, 20 ms apart) is flushed at once.
    await asyncio.sleep(interval)
    server.forward_media(speaker.session, sent[0])
    assert server._flush_handle is not None
    assert not isinstance(server._flush_handle, asyncio.TimerHandle)
    await asyncio.sleep(0)
    assert server._flush_handle is None
    # Within the interval: held until its end, then packed.
    flushed_at = loop.time()
    server.forward_media(speaker.session, sent[1])
    held = server._flush_handle
    assert isinstance(held, asyncio.TimerHandle)
    assert flushed_at < held.when() <= flushed_at + interval
    server.forward_media(speaker.session, sent[2])
    server.forward_media(speaker.session, sent[3])
    assert server._flush_handle is held
    for _ in range(100):
        if len(received) == len(sent):
            break
        await asyncio.sleep(0.02)
    assert received == sent


def test_clients_advertise_their_ack_delay(tmp_path: Path):
    """The server's loss detection waits for a delayed ACK instead of probing (DESIGN)."""
    from bench.sansio import Pair as SansIoPair
    from salon.quic.protocol import ACK_DELAY_MARGIN, CLIENT_ACK_DELAY

    pair = SansIoPair(tmp_path / "tls", CLIENT_ACK_DELAY)
    assert pair.client._ack_delay == CLIENT_ACK_DELAY
    expected = round((CLIENT_ACK_DELAY + ACK_DELAY_MARGIN) * 1000) / 1000
    assert pair.server._loss.max_ack_delay == pytest.approx(expected)


@pytest.mark.skipif(not Path("/proc/sys/net/core/rmem_max").exists(), reason="Linux sizes")
async def test_the_quic_socket_gets_larger_buffers(live):
    """salond's socket has the buffers it asked for: Linux caps a request at rmem_max /
    wmem_max and reports twice what it grants (its bookkeeping overhead)."""
    import socket

    from salon.quic.traffic import SOCKET_BUFFER_BYTES

    sock = live.daemon.server._quic_server._transport.get_extra_info("socket")
    for option, limit in ((socket.SO_RCVBUF, "rmem_max"), (socket.SO_SNDBUF, "wmem_max")):
        cap = int(Path(f"/proc/sys/net/core/{limit}").read_text())
        granted = sock.getsockopt(socket.SOL_SOCKET, option)
        assert granted == 2 * min(SOCKET_BUFFER_BYTES, cap), (limit, granted, cap)


async def test_the_quic_socket_is_read_in_batches_and_counted():
    """Every datagram waiting on the socket is read and counted; sends go out directly."""
    import socket

    from salon.quic.traffic import UdpTraffic

    batch = 8

    loop = asyncio.get_running_loop()
    received: list[tuple[bytes, object]] = []

    direct: list[bytes] = []

    class Connection:
        def datagram_received(self, data: bytes, addr: object) -> None:
            direct.append(data)

    class FakeQuicServer(asyncio.DatagramProtocol):
        _transport: asyncio.DatagramTransport | None = None
        _configuration = QuicConfiguration(connection_id_length=8)
        _protocols = {b"knowncid": Connection()}

        def datagram_received(self, data: bytes, addr: object) -> None:
            received.append((data, addr))

    transport, server = await loop.create_datagram_endpoint(
        FakeQuicServer, local_addr=("127.0.0.1", 0)
    )
    server._transport = transport
    traffic = UdpTraffic()
    traffic.attach(server, read_batch=batch)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2.0)
    try:
        address = transport.get_extra_info("sockname")
        count = batch * 2 + 5
        for index in range(count):
            peer.sendto(index.to_bytes(2, "big"), address)
        # All are waiting on the socket: asyncio's own reader takes one per loop iteration,
        # the batch reader a whole batch.
        iterations = 4
        for _ in range(iterations):
            await asyncio.sleep(0)
        assert len(received) >= batch, f"{len(received)} read in {iterations} iterations"
        for _ in range(200):
            if len(received) == count:
                break
            await asyncio.sleep(0.01)
        assert [int.from_bytes(data, "big") for data, _ in received] == list(range(count))
        assert traffic.packets_in == count and traffic.bytes_in == 2 * count
        # A short header of a known connection id goes straight to that connection; with
        # another id, or a long header, to the server as before.
        short = bytes((0x41,)) + b"knowncid" + bytes(30)
        others = [bytes((0x41,)) + b"otherxid" + bytes(30), bytes((0xC1,)) + b"knowncid"]
        for data in (short, *others):
            peer.sendto(data, address)
        for _ in range(200):
            if len(received) == count + 2:
                break
            await asyncio.sleep(0.01)
        assert direct == [short]
        assert [data for data, _ in received[count:]] == others
        assert traffic.packets_in == count + 3
        server._transport.sendto(b"reply", peer.getsockname())
        assert peer.recvfrom(100)[0] == b"reply"
        assert traffic.packets_out == 1 and traffic.bytes_out == 5
    finally:
        peer.close()
        transport.close()
