"""The line under the header that says whether the console reaches the daemon."""

from __future__ import annotations

from textual.widgets import Static


class ConnectionBar(Static):
    """``● connected ...`` or ``○ daemon unreachable ... reconnecting``."""

    DEFAULT_CLASSES = "-connecting"

    def show_connected(self, server: str, operator: str, socket: str) -> None:
        self.set_classes("-connected")
        self.update(f"● connected to {server} at {socket} as {operator}")

    def show_disconnected(self, reason: str, socket: str, attempt: int) -> None:
        self.set_classes("-disconnected")
        tries = f" (attempt {attempt})" if attempt > 1 else ""
        self.update(f"○ daemon unreachable: {reason} — reconnecting{tries}…  ({socket})")
