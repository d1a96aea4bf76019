"""The sans-I/O core of the daemon: rooms, roles, permissions, policies and the forwarder.

Nothing in this package performs I/O or imports asyncio, aioquic or pluggy: every input is a
method call carrying the current time and every output is pulled (see :class:`SalonCore`, a
facade over one module per concern sharing a :class:`~.context.CoreContext`).
"""

from __future__ import annotations

from .errors import CoreError
from .events import (
    ApprovalChanged,
    BanChanged,
    CoreEvent,
    Deliver,
    HandQueueChanged,
    InviteChanged,
    KnockReceived,
    KnockResolved,
    MemberJoined,
    MemberLeft,
    ModerationTaken,
    ParticipantChanged,
    RoleChanged,
    RoomClosed,
    RoomCreated,
    RoomSettingsChanged,
    SpeakingChanged,
    SubscriptionChanged,
)
from .forwarder import Flow, Forwarder, Outlet
from .identity import Identity
from .limits import Limits
from .permissions import Action
from .records import RoomRecord, RoomSettings
from .room import Ban, Invite, JoinRequest, Member, Room
from .service import SalonCore
from .speaking_updates import MemberLevel

__all__ = [
    "Action",
    "ApprovalChanged",
    "Ban",
    "BanChanged",
    "CoreError",
    "CoreEvent",
    "Deliver",
    "Flow",
    "Forwarder",
    "HandQueueChanged",
    "Identity",
    "Invite",
    "InviteChanged",
    "JoinRequest",
    "KnockReceived",
    "KnockResolved",
    "Limits",
    "Member",
    "MemberJoined",
    "MemberLeft",
    "MemberLevel",
    "ModerationTaken",
    "Outlet",
    "ParticipantChanged",
    "RoleChanged",
    "Room",
    "RoomClosed",
    "RoomCreated",
    "RoomRecord",
    "RoomSettings",
    "RoomSettingsChanged",
    "SalonCore",
    "SpeakingChanged",
    "SubscriptionChanged",
]
