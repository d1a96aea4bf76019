"""App-wide messages: what the admin connection and the workers tell the screens."""

from __future__ import annotations

from textual.message import Message

from salon.daemon.admin.client import AdminClient
from salon.daemon.admin.protocol import AuditEntry, Event, RoomDetail, StatusInfo, Welcome
from salon.daemon.wire.messages import RoomSummary


class Connected(Message):
    """The admin socket answered; ``reconnected`` when it had been lost before."""

    def __init__(self, client: AdminClient, welcome: Welcome, reconnected: bool) -> None:
        super().__init__()
        self.client = client
        self.welcome = welcome
        self.reconnected = reconnected


class Disconnected(Message):
    """The admin socket is unreachable or the daemon went away; the app keeps retrying."""

    def __init__(self, reason: str, attempt: int) -> None:
        super().__init__()
        self.reason = reason
        self.attempt = attempt


class AdminEventReceived(Message):
    """An event pushed by the daemon (see ``salon.daemon.admin.protocol.Event``)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class RoomsLoaded(Message):
    def __init__(self, rooms: list[RoomSummary], knocks: dict[str, int]) -> None:
        super().__init__()
        self.rooms = rooms
        self.knocks = knocks


class RoomLoaded(Message):
    def __init__(self, detail: RoomDetail) -> None:
        super().__init__()
        self.detail = detail


class RoomGone(Message):
    """The room shown was closed or does not exist."""

    def __init__(self, room: str, reason: str) -> None:
        super().__init__()
        self.room = room
        self.reason = reason


class StatusLoaded(Message):
    def __init__(self, status: StatusInfo) -> None:
        super().__init__()
        self.status = status


class AuditLoaded(Message):
    def __init__(self, entries: list[AuditEntry]) -> None:
        super().__init__()
        self.entries = entries


class ActionFinished(Message):
    """An operator action completed (``error`` empty) or was refused."""

    def __init__(self, description: str, error: str = "") -> None:
        super().__init__()
        self.description = description
        self.error = error
