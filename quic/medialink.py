"""The media link: a listener connection's media path run in C while it carries only audio.

At 200 listeners the Python fast paths (:mod:`salon.quic.fastpath` for sending,
:mod:`salon.quic.ackpath` for the listeners' ACKs) were bound by touching aioquic's
per-connection objects: a dozen objects per send, each out of the CPU's caches by the time its
connection's turn came. ``_speedups.MediaLink`` keeps what those paths read and write — the
1-RTT packets in flight, loss recovery's RTT estimate and loss time, Reno's window and its RTT
monitor, the pacer, the idle timer, the receive bookkeeping of ACK-only packets — in one C
struct, and does the same arithmetic as aioquic in the same order.

The state has one owner at a time. :func:`load` copies it from aioquic's objects into the link
(the link is then *active*); :func:`unload` writes it back. A connection is loaded only in the
datagram fast path's clean state (nothing pending but media, see :mod:`salon.quic.fastpath`),
with only the fast path's own packets in flight (no delivery handlers), Reno as congestion
control and AES keys; every call into aioquic unloads first (``FastQuicConnection``), and so
does anything the link refuses (a loss to declare, a packet that is not ACK-only, a possible
duplicate): aioquic then handles it exactly as without the link. ``tests/test_medialink.py``
replays the same traffic through a connection with the link and one without and compares
aioquic's state after every step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.recovery import MAX_ACK_RANGES
from aioquic.tls import Epoch

from salon.quic import load_speedups
from salon.quic.ckeys import checked_opener

if TYPE_CHECKING:
    from salon.quic.fastpath import DatagramFastPath

_speedups = load_speedups()

ONE_RTT = Epoch.ONE_RTT
ZERO_RTT = Epoch.ZERO_RTT
NAN = math.nan

SENT = 0
BLOCKED = 1
FALLBACK = 2
APPLIED = 0
REFUSED = 1


def available() -> bool:
    """Whether the C extension (with ``MediaLink``) was built."""
    return _speedups is not None and hasattr(_speedups, "MediaLink")


flush_links: Any = getattr(_speedups, "flush_links", None)
"""``_speedups.flush_links(protocols, now, packets, addrs)``: one tick's media for many
connections through their loaded links (see its docstring), or None without the C extension."""


def new_link() -> Any:
    """A fresh, unloaded ``MediaLink``, or None without the C extension."""
    return _speedups.MediaLink() if available() else None


def _reno(cc: Any) -> bool:
    """Whether ``cc`` acts as aioquic's Reno when packets are sent and acknowledged (Reno or
    Salon's MediaReno, which only differ on loss)."""
    kind = type(cc)
    return (
        isinstance(cc, RenoCongestionControl)
        and kind.on_packet_acked is RenoCongestionControl.on_packet_acked
        and kind.on_packet_sent is RenoCongestionControl.on_packet_sent
        and kind.on_rtt_measurement is RenoCongestionControl.on_rtt_measurement
    )


SHARED_FIELDS: list[tuple[str, str, str, str]] = [
    # (the link's member, the aioquic object, its attribute, conversion)
    ("next_packet_number", "quic", "_packet_number", ""),
    ("close_at", "quic", "_close_at", ""),
    ("ack_eliciting_sent_since_receipt", "quic", "_ack_eliciting_sent_since_receipt", "bool"),
    ("spin_bit", "quic", "_spin_bit", "bool"),
    ("spin_highest_pn", "quic", "_spin_highest_pn", ""),
    ("ack_eliciting_in_flight", "space", "ack_eliciting_in_flight", ""),
    ("largest_acked_packet", "space", "largest_acked_packet", ""),
    ("loss_time", "space", "loss_time", "none"),
    ("expected_packet_number", "space", "expected_packet_number", ""),
    ("largest_received_packet", "space", "largest_received_packet", ""),
    ("largest_received_time", "space", "largest_received_time", "none"),
    ("pto_count", "loss", "_pto_count", ""),
    ("peer_completed_address_validation", "loss", "peer_completed_address_validation", "bool"),
    ("rtt_initialized", "loss", "_rtt_initialized", "bool"),
    ("rtt_latest", "loss", "_rtt_latest", ""),
    ("rtt_min", "loss", "_rtt_min", ""),
    ("rtt_smoothed", "loss", "_rtt_smoothed", ""),
    ("rtt_variance", "loss", "_rtt_variance", ""),
    ("rtt_first_sample_time", "loss", "_rtt_first_sample_time", ""),
    (
        "time_of_last_sent_ack_eliciting_packet",
        "loss",
        "_time_of_last_sent_ack_eliciting_packet",
        "",
    ),
    ("bytes_in_flight", "cc", "bytes_in_flight", ""),
    ("congestion_window", "cc", "congestion_window", ""),
    ("ssthresh", "cc", "ssthresh", "ssthresh"),
    ("congestion_stash", "cc", "_congestion_stash", ""),
    ("monitor_increases", "monitor", "_increases", ""),
    ("monitor_sample_idx", "monitor", "_sample_idx", ""),
    ("monitor_ready", "monitor", "_ready", "bool"),
    ("monitor_filtered_min", "monitor", "_filtered_min", "none"),
    ("monitor_sample_max", "monitor", "_sample_max", "none"),
    ("monitor_sample_min", "monitor", "_sample_min", "none"),
    ("monitor_sample_time", "monitor", "_sample_time", ""),
    ("monitor_samples", "monitor", "_samples", ""),
    ("bucket_max", "pacer", "bucket_max", ""),
    ("bucket_time", "pacer", "bucket_time", ""),
    ("evaluation_time", "pacer", "evaluation_time", ""),
    ("packet_time", "pacer", "packet_time", "none"),
]
"""What the link holds and writes back: each is loaded from aioquic's object and written back
to it. Conversions: "none", None as NaN; "ssthresh", None as -1; "bool", written back as a
bool. The link only reads the rest (keys, addresses, limits, the initial RTT...)."""


def _owners(quic: Any) -> dict[str, Any]:
    loss = quic._loss
    return {
        "quic": quic,
        "space": quic._spaces[ONE_RTT],
        "loss": loss,
        "cc": loss._cc,
        "monitor": loss._cc._rtt_monitor,
        "pacer": loss._pacer,
    }


def load(fast: DatagramFastPath) -> bool:
    """Move ``fast``'s connection's media state into its link; False (nothing changed) when the
    connection is not in a state the link covers. Call only while ``quic.fast_clean``."""
    link = fast.link
    quic: Any = fast.quic
    if link is None or link.active or not quic.fast_clean or fast._sealer is None:
        return False
    loss = quic._loss
    cc = loss._cc
    pacer = loss._pacer
    space = quic._spaces[ONE_RTT]
    cryptos = quic._cryptos
    recv = cryptos[ONE_RTT].recv
    if (
        not fast._inline_recovery
        or not _reno(cc)
        or not loss.handshake_confirmed
        or quic._pacing_at is not None
        or quic._path_validation_deadline() is not None
        or quic._close_at is None
        or quic._peer_cid.sequence_number is None
        or space.discarded
        or not recv.is_valid()
        or cryptos[ZERO_RTT].recv.is_valid()
    ):
        return False
    for other in loss.spaces:
        if other is not space and (
            other.loss_time is not None or other.ack_eliciting_in_flight or other.ack_at is not None
        ):
            return False
    records = []
    foreign = {}
    for number, packet in space.sent_packets.items():
        if packet.delivery_handlers or not packet.in_flight or not packet.is_ack_eliciting:
            return False
        if type(packet) is not fast.record_type:
            foreign[number] = packet
        records.append((number, packet.sent_time, packet.sent_bytes))
    if recv.aead is not fast.link_opener_key:
        fast.link_opener_key = recv.aead
        fast.link_opener = checked_opener(_speedups, recv)
    if fast.link_opener is None:
        return False
    link.set_sent(records)
    fast.link_foreign = foreign
    link.sealer = fast._sealer
    link.opener = fast.link_opener
    link.addr = fast._addr
    link.set_header(fast._header_start, quic.host_cid)
    link.max_payload = fast._max_payload
    owners = _owners(quic)
    for name, owner, attr, kind in SHARED_FIELDS:
        value = getattr(owners[owner], attr)
        if kind == "none":
            value = NAN if value is None else value
        elif kind == "ssthresh":
            value = -1 if value is None else value
        setattr(link, name, value)
    link.rtt_initial = loss._rtt_initial
    link.max_ack_delay = loss.max_ack_delay
    link.cc_max_datagram_size = cc._max_datagram_size
    link.congestion_recovery_start_time = cc._congestion_recovery_start_time
    link.pacer_max_datagram_size = pacer._max_datagram_size
    idle = quic._configuration.idle_timeout
    remote = quic._remote_max_idle_timeout
    link.idle_timeout_config = idle if remote is None else min(idle, remote)
    link.ack_at = NAN if space.ack_at is None else space.ack_at
    link.is_client = quic._is_client
    link.key_phase = recv.key_phase
    link.ack_delay_exponent = quic._remote_ack_delay_exponent
    link.received_floor = link.received_highest = space.largest_received_packet
    link.bytes_sent = 0
    link.take_received()
    link.packets_sent = link.acks_applied = link.datagrams_dropped = 0
    link.active = 1
    quic.media_unload = fast.unload_link
    fast.link_loads += 1
    return True


def unload(fast: DatagramFastPath) -> None:
    """Write the link's state back into aioquic's objects (the link is then inactive)."""
    link = fast.link
    if link is None or not link.active:
        return
    link.active = 0
    quic: Any = fast.quic
    quic.media_unload = None
    space = quic._spaces[ONE_RTT]
    sent_packets = space.sent_packets
    foreign = fast.link_foreign
    sent_packets.clear()
    for number, sent_time, sent_bytes in link.sent_packets():
        packet = foreign.get(number)
        if packet is None:
            packet = fast.new_record(number, sent_time, sent_bytes)
        sent_packets[number] = packet
    fast.link_foreign = {}
    owners = _owners(quic)
    for name, owner, attr, kind in SHARED_FIELDS:
        value = getattr(link, name)
        if kind == "none":
            value = None if math.isnan(value) else value
        elif kind == "ssthresh":
            value = None if value < 0 else value
        elif kind == "bool":
            value = bool(value)
        setattr(owners[owner], attr, value)
    fast._path.bytes_sent += link.bytes_sent
    link.bytes_sent = 0
    ack_queue = space.ack_queue
    received = space.received_packets
    for number in link.take_received():
        ack_queue.add(number)
        received.add(number)
        if len(ack_queue) > MAX_ACK_RANGES:
            ack_queue.shift()
    fast.packets += link.packets_sent
    fast.link_packets += link.packets_sent
    fast.dropped += link.datagrams_dropped
    fast.link_acks += link.acks_applied
    link.packets_sent = link.acks_applied = link.datagrams_dropped = 0
    fast.follow_spin()
    # aioquic's handle_timer acts on the loss detection time its last get_timer computed.
    quic._loss_at = quic._loss.get_loss_detection_time(amplification_limited=False)
