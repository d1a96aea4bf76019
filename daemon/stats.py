"""Server-wide counters, read by the admin API, the metrics endpoint and the benchmarks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ServerStats:
    """Counters of the network layer; the forwarder keeps its own (see ``snapshot``)."""

    connections_total: int = 0
    """Connections that completed the handshake since start."""
    messages_in: int = 0
    """Control messages received."""
    messages_out: int = 0
    """Control messages sent (a message to N sessions counts N)."""
    datagrams_in: int = 0
    """Media datagrams received."""
    datagrams_out: int = 0
    """Media datagrams handed to QUIC for sending."""
    errors: Counter[str] = field(default_factory=Counter)
    """Error replies sent, by error code."""
    drops: Counter[str] = field(default_factory=Counter)
    """Things dropped by the network layer, by reason."""
    plugin_errors: Counter[str] = field(default_factory=Counter)
    """Plugin failures (exceptions, time-outs), by hook name."""
    abuse: Counter[str] = field(default_factory=Counter)
    """Requests refused by the per-address guest limits, by limit (daemon/abuse.py)."""

    def count_drop(self, reason: str, amount: int = 1) -> None:
        self.drops[reason] += amount

    def snapshot(self, forwarder: Any = None, **extra: Any) -> dict[str, Any]:
        """A JSON-ready view of every counter, merged with the forwarder's."""
        drops = Counter(self.drops)
        forwarded = received = 0
        if forwarder is not None:
            drops.update(forwarder.drops)
            forwarded = forwarder.forwarded
            received = forwarder.received
        return {
            "connections_total": self.connections_total,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "datagrams_in": self.datagrams_in,
            "datagrams_out": self.datagrams_out,
            "media_received": received,
            "media_forwarded": forwarded,
            "drops": dict(drops),
            "errors": dict(self.errors),
            "plugin_errors": dict(self.plugin_errors),
            "abuse": dict(self.abuse),
            **extra,
        }
