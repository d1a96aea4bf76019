"""The server stats panel of the rooms screen."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from salon.daemon.admin.protocol import ClusterStatus, StatusInfo, StoreStatus

from ..text import plain


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
        if status.cluster is not None:
            # Node and room ids come from the registry in Redis: shown literally, never markup.
            for label, line in cluster_lines(status.cluster):
                table.add_row(plain(label), plain(line))
        self.update(table)


MAX_ROOM_LINES = 8
"""Rooms listed with their nodes in the panel at most (the busiest first); the rest counted."""


def cluster_lines(cluster: ClusterStatus) -> list[tuple[str, str]]:
    """The cluster rows: one per live node with its load (``*`` marks this one), then which
    nodes carry each room, rooms on most nodes first."""
    rows: list[tuple[str, str]] = [
        ("cluster", f"node {cluster.node_id}, {len(cluster.nodes)} live")
    ]
    for node in cluster.nodes:
        mark = "*" if node.this else " "
        # The addresses are in `salonctl nodes`: the panel is narrow.
        rows.append((f" {mark}{node.node_id}", f"{node.sessions} sessions, {node.rooms} rooms"))
    ranked = sorted(cluster.room_nodes.items(), key=lambda item: (-len(item[1]), item[0]))
    for room, nodes in ranked[:MAX_ROOM_LINES]:
        rows.append((f" room {room}", "on " + ", ".join(sorted(nodes))))
    if len(ranked) > MAX_ROOM_LINES:
        rows.append(("", f"... {len(ranked) - MAX_ROOM_LINES} more rooms"))
    if cluster.redirects:
        rows.append(("redirects", str(cluster.redirects)))
    return rows


def store_line(store: StoreStatus) -> str:
    """The store's backend and health: UNAVAILABLE (with the reason) while writes are refused."""
    health = "ok" if store.available else f"UNAVAILABLE ({store.last_error})"
    return (
        f"{store.backend} {health}, {store.queued} queued, {store.outages} outages,"
        f" {store.reconnects} reconnects"
    )
