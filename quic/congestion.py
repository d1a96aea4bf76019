"""Congestion control for connections that carry live audio: Reno with a higher floor.

aioquic's Reno halves the window at every loss episode down to two full-size packets. On a
path with random (non-congestive) loss, such as Wi-Fi or a mobile link, a few percent loss
keeps the window near that floor; small audio datagrams then wait for the next acknowledgement
(up to the peer's ACK delay, 25 ms and more) and the loss turns into delay and jitter. Measured
here on loopback with 5% random loss towards one listener: the window sat at 2.4-6 KB, audio
queued behind it and the listener's jitter rose from 7 to 30-40 ms.

Salon's media is rate-limited at its source (one datagram per speaker per 20 ms) and the
server's per-listener queue is bounded (the oldest datagram is dropped), so what protects the
network is that bound, not the window. The floor keeps the window responsive above it and
never starves a few speakers' audio. Registered with aioquic's public
``register_congestion_control`` under :data:`MEDIA_CONGESTION_CONTROL`.
"""

from __future__ import annotations

from collections.abc import Iterable

from aioquic.quic.congestion.base import register_congestion_control
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.packet_builder import QuicSentPacket

MEDIA_CONGESTION_CONTROL = "salon-media"
"""The ``QuicConfiguration.congestion_control_algorithm`` of Salon's connections."""
MINIMUM_WINDOW_PACKETS = 16
"""The window never goes below this many full-size packets (about 20 KB)."""


class MediaReno(RenoCongestionControl):
    """Reno whose window stays at least :data:`MINIMUM_WINDOW_PACKETS` packets."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._floor = MINIMUM_WINDOW_PACKETS * max_datagram_size

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        super().on_packets_lost(now=now, packets=packets)
        self._raise_to_floor()

    def on_persistent_congestion(self) -> None:
        super().on_persistent_congestion()
        self._raise_to_floor()

    def _raise_to_floor(self) -> None:
        if self.congestion_window < self._floor:
            self.congestion_window = self._floor
        if self.ssthresh is not None and self.ssthresh < self._floor:
            self.ssthresh = self._floor


register_congestion_control(MEDIA_CONGESTION_CONTROL, MediaReno)
