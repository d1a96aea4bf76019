"""The server stats panel of the rooms screen."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from salon.daemon.admin.protocol import StatusInfo, StoreStatus


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


class StatsPanel(Static):
    """Connections, rooms, packets, drops and plugin errors, refreshed by ``stats`` events."""

    def show(self, status: StatusInfo | None) -> None:
        if status is None:
            self.update(Text("no data", style="dim"))
            return
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold")
        table.add_column()
        traffic = status.traffic
        uptime = int(status.uptime)
        table.add_row("server", f"{status.server} pid {status.pid}")
        table.add_row("address", status.address)
        table.add_row("uptime", f"{uptime // 3600}h {uptime // 60 % 60:02d}m {uptime % 60:02d}s")
        table.add_row(
            "connections", f"{status.connections} open / {status.connections_total} total"
        )
        table.add_row("rooms", f"{status.rooms} live, {status.scheduled_rooms} scheduled")
        table.add_row("members", f"{status.members} ({status.speakers} on stage)")
        table.add_row("packets in", f"{traffic.packets_in} ({_size(traffic.bytes_in)})")
        table.add_row("packets out", f"{traffic.packets_out} ({_size(traffic.bytes_out)})")
        table.add_row("media", f"{status.media_received} in, {status.media_forwarded} fwd")
        drops = ", ".join(f"{k} {v}" for k, v in sorted(status.drops.items())) or "none"
        table.add_row("drops", drops)
        errors = ", ".join(f"{k} {v}" for k, v in sorted(status.plugin_errors.items())) or "none"
        table.add_row("plugin errors", errors)
        table.add_row("admin clients", str(status.admin_clients))
        if status.store is not None:
            table.add_row("store", store_line(status.store))
        self.update(table)


def store_line(store: StoreStatus) -> str:
    """The store's backend and health: UNAVAILABLE (with the reason) while writes are refused."""
    health = "ok" if store.available else f"UNAVAILABLE ({store.last_error})"
    return (
        f"{store.backend} {health}, {store.queued} queued, {store.outages} outages,"
        f" {store.reconnects} reconnects"
    )
