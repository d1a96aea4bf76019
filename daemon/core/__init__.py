"""The sans-I/O core of the daemon: rooms, roles, permissions, policies and the forwarder.

Nothing in this package performs I/O or imports asyncio, aioquic or pluggy: every input is a
method call carrying the current time and every output is pulled (see :class:`SalonCore`).
"""

from __future__ import annotations

from .errors import CoreError
from .events import (
    CoreEvent,
    Deliver,
    KnockReceived,
    MemberJoined,
    MemberLeft,
    ModerationTaken,
    RoleChanged,
    RoomClosed,
    RoomCreated,
    SpeakingChanged,
)
from .forwarder import Flow, Forwarder, Outlet
from .identity import Identity
from .limits import Limits
from .permissions import Action
from .room import Ban, Invite, JoinRequest, Member, Room
from .service import SalonCore

__all__ = [
    "Action",
    "Ban",
    "CoreError",
    "CoreEvent",
    "Deliver",
    "Flow",
    "Forwarder",
    "Identity",
    "Invite",
    "JoinRequest",
    "KnockReceived",
    "Limits",
    "Member",
    "MemberJoined",
    "MemberLeft",
    "ModerationTaken",
    "Outlet",
    "RoleChanged",
    "Room",
    "RoomClosed",
    "RoomCreated",
    "SalonCore",
    "SpeakingChanged",
]
