"""Every aioquic and asyncio internal that salon.quic relies on, checked by name.

salon.quic is pinned to one aioquic release (pyproject.toml, ``salon.quic.AIOQUIC_VERSION``).
When aioquic is upgraded, each internal below that moved or changed shape fails on its own,
under its own name, so the upgrade knows what to port.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import types
from collections.abc import Callable
from typing import Any

import aioquic
import pytest
from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3Connection
from aioquic.quic import packet as quic_packet
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketRecovery
from aioquic.tls import Epoch

from salon.quic import AIOQUIC_VERSION
from tests.test_fastpath import Pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """A connected client and server connection, so that per-connection state exists."""
    pair = Pair(tmp_path_factory.mktemp("seam"))
    pair.client.send_stream_data(0, b"x")
    pair.client_to_server()
    return pair


def has_parameters(function: Any, *names: str) -> bool:
    parameters = inspect.signature(function).parameters
    return all(name in parameters for name in names)


def connection_has(name: str) -> Callable[[Pair], bool]:
    return lambda p: hasattr(p.server, name)


def protocol_has(name: str) -> Callable[[Pair], bool]:
    return lambda p: hasattr(QuicConnectionProtocol, name)


# (what, how to check it) — "what" is the internal's name as the seam uses it.
CHECKS: dict[str, Callable[[Pair], bool]] = {
    "aioquic.__version__ pinned": lambda p: aioquic.__version__ == AIOQUIC_VERSION,
    # QuicConnection: what the fast path reads before sending by itself.
    **{
        f"QuicConnection.{name}": connection_has(name)
        for name in (
            "_state",
            "_close_pending",
            "_handshake_confirmed",
            "_quic_logger",
            "_handshake_done_pending",
            "_ping_pending",
            "_probe_pending",
            "_retire_connection_ids",
            "_streams_blocked_pending",
            "_key_update_pending",
            "_is_client",
            "_remote_preferred_address",
            "_host_cids",
            "_peer_cid",
            "_spin_bit",
            "_max_datagram_size",
            "_packet_number",
            "_ack_eliciting_sent_since_receipt",
            "_close_at",
            "_ack_delay",
            "_remote_max_datagram_frame_size",
            "_events",
            "_loss",
        )
    },
    "QuicConnection._datagrams_pending is a deque": lambda p: isinstance(
        p.server._datagrams_pending, collections.deque
    ),
    "QuicConnection._network_paths[0].addr/.is_validated/.remote_challenges/.bytes_sent": (
        lambda p: all(
            hasattr(p.server._network_paths[0], n)
            for n in ("addr", "is_validated", "remote_challenges", "bytes_sent")
        )
    ),
    "QuicConnection._cryptos[Epoch.ONE_RTT].send.encrypt_packet/.is_valid": lambda p: (
        callable(p.server._cryptos[Epoch.ONE_RTT].send.encrypt_packet)
        and callable(p.server._cryptos[Epoch.ONE_RTT].send.is_valid)
    ),
    "QuicConnection._cryptos[...].key_phase/._update_key_requested": lambda p: (
        hasattr(p.server._cryptos[Epoch.ONE_RTT], "key_phase")
        and hasattr(p.server._cryptos[Epoch.ONE_RTT], "_update_key_requested")
    ),
    "QuicConnection._crypto_streams[Epoch.ONE_RTT].sender.buffer_is_empty": lambda p: hasattr(
        p.server._crypto_streams[Epoch.ONE_RTT].sender, "buffer_is_empty"
    ),
    "QuicConnection._local_max_data/_local_max_streams_bidi/_uni .used/.value/.sent": lambda p: all(
        hasattr(getattr(p.server, limit), n)
        for limit in ("_local_max_data", "_local_max_streams_bidi", "_local_max_streams_uni")
        for n in ("used", "value", "sent")
    ),
    "QuicConnection._host_cids[*].was_sent": lambda p: all(
        hasattr(cid, "was_sent") for cid in p.server._host_cids
    ),
    "QuicConnection._peer_cid.cid": lambda p: isinstance(p.server._peer_cid.cid, bytes),
    "QuicConnection._streams[*] sender/receiver fields": lambda p: (
        all(
            hasattr(stream.sender, n)
            for stream in p.server._streams.values()
            for n in ("buffer_is_empty", "reset_pending", "_buffer_start", "_buffer_stop")
        )
        and all(
            hasattr(stream, n)
            for stream in p.server._streams.values()
            for n in ("is_finished", "max_stream_data_local", "max_stream_data_local_sent")
        )
        and all(
            hasattr(stream.receiver, n)
            for stream in p.server._streams.values()
            for n in ("stop_pending", "highest_offset")
        )
        and len(p.server._streams) > 0
    ),
    "QuicConnection._spaces[Epoch.ONE_RTT].ack_at/.ack_eliciting_in_flight/.sent_packets": (
        lambda p: all(
            hasattr(p.server._spaces[Epoch.ONE_RTT], n)
            for n in ("ack_at", "ack_eliciting_in_flight", "sent_packets")
        )
    ),
    "QuicConnection._idle_timeout()": lambda p: isinstance(p.server._idle_timeout(), float),
    "QuicConnection._serialize_transport_parameters()": lambda p: isinstance(
        p.client._serialize_transport_parameters(), bytes
    ),
    "QuicConnection.tls._peer_certificate": lambda p: p.client.tls._peer_certificate is not None,
    "QuicConnectionState.CONNECTED": lambda p: p.server._state is QuicConnectionState.CONNECTED,
    # Loss recovery and congestion control the fast path registers its packets with.
    "QuicPacketRecovery.on_packet_sent(packet, space)": lambda p: has_parameters(
        p.server._loss.on_packet_sent, "packet", "space"
    ),
    "QuicPacketRecovery._cc.bytes_in_flight/.congestion_window": lambda p: (
        hasattr(p.server._loss._cc, "bytes_in_flight")
        and hasattr(p.server._loss._cc, "congestion_window")
    ),
    "QuicPacketRecovery._pacer.packet_time/.next_send_time/.update_after_send": lambda p: (
        hasattr(p.server._loss._pacer, "packet_time")
        and has_parameters(p.server._loss._pacer.next_send_time, "now")
        and has_parameters(p.server._loss._pacer.update_after_send, "now")
    ),
    "QuicSentPacket fields": lambda p: (
        {f.name for f in dataclasses.fields(QuicSentPacket)}
        == {
            "epoch",
            "in_flight",
            "is_ack_eliciting",
            "is_crypto_packet",
            "packet_number",
            "packet_type",
            "sent_time",
            "sent_bytes",
            "delivery_handlers",
            "quic_logger_frames",
        }
    ),
    "aioquic.quic.packet: PACKET_FIXED_BIT, QuicFrameType.DATAGRAM_WITH_LENGTH, "
    "QuicPacketType.ONE_RTT, pull/push_quic_transport_parameters": lambda p: (
        all(
            hasattr(quic_packet, n)
            for n in (
                "PACKET_FIXED_BIT",
                "QuicFrameType",
                "QuicPacketType",
                "pull_quic_transport_parameters",
                "push_quic_transport_parameters",
            )
        )
        and quic_packet.QuicFrameType.DATAGRAM_WITH_LENGTH == 0x31
    ),
    # The asyncio protocol classes the seam subclasses or patches.
    **{
        f"QuicConnectionProtocol.{name}": protocol_has(name)
        for name in ("_handle_timer", "_process_events", "transmit", "datagram_received")
    },
    "QuicConnectionProtocol() sets _quic/_loop/_transport/_timer/_timer_at": lambda p: all(
        n in inspect.getsource(QuicConnectionProtocol.__init__)
        for n in ("self._quic", "self._loop", "self._transport", "self._timer", "self._timer_at")
    ),
    # What the ACK fast path (salon.quic.ackpath) reads and updates, as receive_datagram does.
    **{
        f"QuicConnection.{name}": connection_has(name)
        for name in ("_spin_highest_pn", "_remote_ack_delay_exponent", "host_cid", "_cryptos")
    },
    "CryptoContext.decrypt_packet(packet, encrypted_offset, expected) -> 4 values": lambda p: (
        has_parameters(
            p.server._cryptos[Epoch.ONE_RTT].recv.decrypt_packet,
            "packet",
            "encrypted_offset",
            "expected_packet_number",
        )
        and "crypto != self" in inspect.getsource(type(p.server._cryptos[Epoch.ONE_RTT].recv))
    ),
    "QuicPacketSpace receive fields": lambda p: all(
        hasattr(p.server._spaces[Epoch.ONE_RTT], n)
        for n in (
            "expected_packet_number",
            "largest_received_packet",
            "largest_received_time",
            "ack_queue",
            "received_packets",
            "discarded",
            "largest_acked_packet",
        )
    ),
    "QuicPacketRecovery.on_ack_received(ack_rangeset, ack_delay, now, space)": lambda p: (
        has_parameters(p.server._loss.on_ack_received, "ack_rangeset", "ack_delay", "now", "space")
        and hasattr(p.server._loss, "peer_completed_address_validation")
    ),
    "receive_datagram's steps for a 1-RTT packet (the ACK fast path mirrors them)": lambda p: all(
        step in inspect.getsource(QuicConnection.receive_datagram)
        for step in (
            "space.expected_packet_number = packet_number + 1",
            "self._spin_highest_pn = packet_number",
            "self._close_at = now + self._idle_timeout()",
            "self._ack_eliciting_sent_since_receipt = False",
            "space.ack_queue.add(packet_number)",
            "space.received_packets.add(packet_number)",
            "space.ack_queue.shift()",
        )
    ),
    # WebTransport (salon.quic.h3): the HTTP/3 settings hook and the TLS certificate swap.
    "H3Connection._get_local_settings()": lambda p: isinstance(
        H3Connection._get_local_settings, types.FunctionType
    ),
    "QuicConnection._alpn_handler, installed as tls.alpn_cb before the Certificate is sent": (
        lambda p: (
            "self.tls.alpn_cb = self._alpn_handler" in inspect.getsource(QuicConnection)
            and hasattr(p.server.tls, "certificate")
            and hasattr(p.server.tls, "certificate_private_key")
            and inspect.getsource(tls.Context._server_handle_hello).index("alpn_cb")
            < inspect.getsource(tls.Context._server_handle_hello).index("push_certificate(")
        )
    ),
    "QuicServer._transport/.datagram_received": lambda p: (
        "self._transport" in inspect.getsource(QuicServer)
        and callable(QuicServer.datagram_received)
    ),
    # quic/traffic.py hands short-header packets to their connection itself.
    "QuicServer._protocols keyed by connection id, _configuration.connection_id_length": (
        lambda p: (
            "self._protocols[header.destination_cid] = protocol"
            in inspect.getsource(QuicServer.datagram_received)
            and "self._protocols.get(header.destination_cid"
            in inspect.getsource(QuicServer.datagram_received)
            and "host_cid_length=self._configuration.connection_id_length"
            in inspect.getsource(QuicServer.datagram_received)
        )
    ),
    # quic/fastpath.py: an ACK of packets without delivery handlers changes nothing else.
    "QuicSentPacket.delivery_handlers run on ACK and loss": lambda p: (
        "packet.delivery_handlers" in inspect.getsource(QuicPacketRecovery.on_ack_received)
        and "delivery_handlers" in inspect.getsource(QuicPacketRecovery)
    ),
}


@pytest.mark.parametrize("internal", sorted(CHECKS))
def test_internal_the_seam_relies_on(pair: Pair, internal: str) -> None:
    try:
        ok = CHECKS[internal](pair)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        pytest.fail(f"aioquic internal moved: {internal} ({type(exc).__name__}: {exc})")
    assert ok, f"aioquic internal moved or changed shape: {internal}"


async def test_asyncio_selector_datagram_transport_internals() -> None:
    """What the batched reader (salon.quic.traffic) reads of asyncio's own transport."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    try:
        missing = [
            f"{type(transport).__name__}.{name}"
            for name in ("_sock", "_sock_fd", "_loop", "_conn_lost", "_protocol", "max_size")
            if not hasattr(transport, name)
        ]
        if not hasattr(loop, "_add_reader"):
            missing.append(f"{type(loop).__name__}._add_reader")
        assert missing == [], f"asyncio internals moved: {missing}"
    finally:
        transport.close()


def test_a_missing_internal_is_named(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check really fails, naming the internal, when aioquic loses one."""
    monkeypatch.delattr(type(pair.server._loss), "on_packet_sent")
    with pytest.raises(pytest.fail.Exception, match=r"on_packet_sent\(packet, space\)"):
        test_internal_the_seam_relies_on(pair, "QuicPacketRecovery.on_packet_sent(packet, space)")
