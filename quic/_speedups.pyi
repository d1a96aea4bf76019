"""Types of the optional C extension (``_speedups.c``): see the docstrings there."""

from collections.abc import Iterable
from typing import Any

class PacketSealer:
    def __init__(self, key: bytes, iv: bytes, hp_key: bytes) -> None: ...
    def protect(self, header: bytes, payload: bytes, packet_number: int) -> bytes: ...
    def seal_datagrams(
        self,
        header_start: bytes,
        packet_number: int,
        queue: Iterable[bytes],
        limit: int,
        max_payload: int,
    ) -> tuple[bytes, int]: ...

class PacketOpener:
    def __init__(self, key: bytes, iv: bytes, hp_key: bytes) -> None: ...
    def open(
        self, packet: bytes, pn_offset: int, expected_packet_number: int, key_phase: int
    ) -> tuple[int, bytes, int] | None: ...

def sendmmsg(fd: int, family: int, packets: list[bytes], addrs: list[Any]) -> tuple[int, int]: ...

class MediaLink:
    """One connection's media path state (see salon.quic.medialink)."""

    active: int
    sealer: PacketSealer | None
    opener: PacketOpener | None
    addr: Any
    max_payload: int
    next_packet_number: int
    ack_eliciting_in_flight: int
    largest_acked_packet: int
    pto_count: int
    loss_time: float
    peer_completed_address_validation: int
    rtt_initialized: int
    rtt_initial: float
    rtt_latest: float
    rtt_min: float
    rtt_smoothed: float
    rtt_variance: float
    rtt_first_sample_time: float
    max_ack_delay: float
    time_of_last_sent_ack_eliciting_packet: float
    bytes_in_flight: int
    congestion_window: int
    ssthresh: int
    congestion_stash: int
    cc_max_datagram_size: int
    congestion_recovery_start_time: float
    monitor_increases: int
    monitor_sample_idx: int
    monitor_ready: int
    monitor_filtered_min: float
    monitor_sample_max: float
    monitor_sample_min: float
    monitor_sample_time: float
    monitor_samples: list[float]
    bucket_max: float
    bucket_time: float
    evaluation_time: float
    packet_time: float
    pacer_max_datagram_size: int
    close_at: float
    idle_timeout_config: float
    ack_at: float
    ack_eliciting_sent_since_receipt: int
    bytes_sent: int
    expected_packet_number: int
    largest_received_packet: int
    largest_received_time: float
    spin_bit: int
    is_client: int
    key_phase: int
    spin_highest_pn: int
    ack_delay_exponent: int
    received_floor: int
    received_highest: int
    packets_sent: int
    acks_applied: int
    datagrams_dropped: int
    def send(
        self, queue: Any, limit: int, now: float, packets: list[bytes], addrs: list[Any]
    ) -> tuple[int, int, int, bool]: ...
    def receive(self, packet: bytes, addr: Any, now: float) -> int: ...
    def timer(self) -> float | None: ...
    def set_sent(self, records: list[tuple[int, float, int]]) -> None: ...
    def sent_packets(self) -> list[tuple[int, float, int]]: ...
    def set_header(self, header_start: bytes, host_cid: bytes) -> None: ...
    def take_received(self) -> list[int]: ...

class FleetReceiver:
    """The bench's listener fleet loop (bench/listener_fleet.py)."""

    packets_in: int
    packets_out: int
    unrouted: int
    in_c: int
    in_python: int
    acks_in_c: int
    def __init__(
        self,
        listener_type: type,
        send_time_offset: int,
        check_every: int,
        received: list[int],
        worst: dict[int, int],
    ) -> None: ...
    def add(self, cid: bytes, listener: Any, index: int) -> None: ...
    def start(self, low: int, high: int, latencies: Any) -> None: ...
    def receive(self, packet: bytes, now: int) -> tuple[int, Any] | None: ...
    def drain(self, fd: int) -> list[tuple[int, Any]]: ...
    def acknowledge_due(self, due: Any, now: int, outbox: list[bytes]) -> None: ...
    def run(
        self, fd: int, due: Any, end: int, outbox: list[bytes], server: Any, family: int
    ) -> int: ...
