"""The state every concern of the core shares, and the outbox it writes to.

:class:`CoreContext` holds what used to be :class:`~.service.SalonCore`'s own fields: the rooms,
the sessions, the events outbox, the timer heap with its table of handlers, the forwarder and
the flow-id allocator. The concern modules (``membership``, ``knocks``, ``stage``,
``moderation``, ``invites``, ``flows``, ``recording_control``, ``lifecycle``, ``schedule``,
``speaking_updates``) each hold one and reach each other through it; ``SalonCore`` is the facade
that builds them and routes requests, timers and media to them.
"""

from __future__ import annotations

import collections
import enum
import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from . import events
from .errors import CoreError
from .forwarder import Forwarder, Outlet
from .identity import Identity
from .keys import FlowIdAllocator
from .limits import Limits
from .permissions import HOST_ROLES, Action, check
from .records import room_settings
from .room import Ban, JoinRequest, Member, Room

if TYPE_CHECKING:
    from .flows import Flows
    from .invites import Invites
    from .knocks import Knocks
    from .lifecycle import RoomLifecycle
    from .membership import Membership
    from .moderation import Moderation
    from .reception import Reception
    from .recording_control import RecordingControl
    from .schedule import Schedule
    from .speaking_updates import SpeakingUpdates
    from .stage import Stage


class TimerKind(enum.Enum):
    """What a timer does when it is due; each kind has one handler (see :meth:`on_timer`)."""

    KNOCK_EXPIRY = "knock"
    ROOM_CLOSE = "close"
    BAN_EXPIRY = "ban"
    SPEAKING_EMIT = "speaking"
    SPEAKING_HOLD = "hold"
    REMINDER = "reminder"
    ROTATION = "rotation"
    COUNTS = "counts"
    RED_FLOW_EXPIRY = "red_flow"


TimerHandler = Callable[[Room, str, float], None]
"""Called with the timer's room, its key (a request id, a user id, a flow id...) and now."""


class Session:
    """A connected session: who it is, its media outlet, and the room it is in or knocks on."""

    __slots__ = (
        "identity",
        "knock",
        "knock_room",
        "outlet",
        "red",
        "red_flow",
        "relayed",
        "room",
    )

    def __init__(
        self,
        identity: Identity,
        outlet: Outlet,
        relayed: bool = False,
        *,
        red: bool = False,
        red_flow: bool = False,
    ) -> None:
        self.identity = identity
        self.outlet = outlet
        self.relayed = relayed
        """The session's client is on another node (a cluster edge): its outlet never joins a
        forwarding group; the room's relay outlet carries the media to that node once."""
        self.red = red
        """The client decodes RED payloads (its ``hello`` said so)."""
        self.red_flow = red_flow
        """The client sends a redundancy flow when asked and uses one it gets (``hello``)."""
        self.room: Room | None = None
        self.knock: JoinRequest | None = None
        self.knock_room: Room | None = None


@dataclass
class Actor:
    """Whoever performs a room request: a member, or an operator (``member`` None)."""

    user: str
    role: str
    room: Room
    member: Member | None


class CoreContext:
    """The shared state of the core, its events outbox and its timers."""

    # The concerns, set by SalonCore once all are built (they refer to each other).
    membership: Membership
    knocks: Knocks
    stage: Stage
    moderation: Moderation
    invites: Invites
    flows: Flows
    recording: RecordingControl
    reception: Reception
    lifecycle: RoomLifecycle
    schedule: Schedule
    speaking: SpeakingUpdates

    def __init__(self, limits: Limits, random_bytes: Callable[[int], bytes]) -> None:
        self.limits = limits
        self.random_bytes = random_bytes
        self.forwarder = Forwarder(limits.max_datagram_size)
        self.rooms: dict[str, Room] = {}
        self.timer_gate: Callable[[str], bool] | None = None
        """Whether a room's timers run here (a cluster node: only the rooms it is home of)."""
        """Rooms by id: live, scheduled and recently closed ones."""
        self.sessions: dict[int, Session] = {}
        self.events: collections.deque[events.CoreEvent] = collections.deque()
        self.timers: list[tuple[float, int, TimerKind, Room, str]] = []
        self._timer_order = itertools.count()
        self._timer_handlers: dict[TimerKind, TimerHandler] = {}
        self.flow_ids = FlowIdAllocator()
        # New flow id of a rotation in its grace period -> recording that recorded the old flow.
        self.rotations: dict[int, str | None] = {}
        # Taps (recorders, audio monitors) get session numbers no real session has.
        self.tap_sessions = itertools.count(-1, -1)
        self.monitors: list[Outlet] = []
        self.speaking_dirty: dict[Room, None] = {}
        self.closed_ids: dict[str, None] = {}
        self.server_bans: dict[str, Ban] = {}
        """Server-wide bans by user id; expired ones may linger."""

    # ------------------------------------------------------------------ timers

    def on_timer(self, kind: TimerKind, handler: TimerHandler) -> None:
        """Make ``handler`` the one that runs timers of ``kind``."""
        self._timer_handlers[kind] = handler

    def push_timer(self, when: float, kind: TimerKind, room: Room, key: str = "") -> None:
        heapq.heappush(self.timers, (when, next(self._timer_order), kind, room, key))

    def run_due_timers(self, now: float) -> None:
        """Run every timer due at ``now``, oldest first, each through its kind's handler."""
        timers = self.timers
        handlers = self._timer_handlers
        rooms = self.rooms
        gate = self.timer_gate
        while timers and timers[0][0] <= now:
            _, _, kind, room, key = heapq.heappop(timers)
            # A forgotten or replaced room's timers are void, and so are those of a room
            # another cluster node runs.
            if rooms.get(room.id) is room and (gate is None or gate(room.id)):
                handlers[kind](room, key, now)

    # ------------------------------------------------------------------ outbox

    def emit(self, event: events.CoreEvent) -> None:
        self.events.append(event)

    def send(self, sessions: Iterable[int], message: messages.Event) -> None:
        targets = tuple(sessions)
        if targets:
            self.events.append(events.Deliver(targets, message))

    def to_members(self, room: Room, message: messages.Event, exclude: int | None = None) -> None:
        self.send((m.session for m in room.members.values() if m.session != exclude), message)

    def to_hosts(self, room: Room, message: messages.Event) -> None:
        self.send((m.session for m in room.stage_members.values() if m.role in HOST_ROLES), message)

    def room_state(self, room: Room, member: Member) -> messages.RoomState:
        """The ``room_state`` for ``member``, bounded (see :mod:`.snapshot`)."""
        snapshot = room.snapshot(member, member.is_host, self.limits.snapshot_listeners)
        return messages.RoomState(room=snapshot)

    def quiet_audience(self, room: Room) -> bool:
        """Whether ``room``'s audience is too big to announce each listener coming, going or
        changing to every member (``limits.audience_events_above``, PROTOCOL.md 7)."""
        return room.listener_count() > self.limits.audience_events_above

    def discard_events(self, mark: int) -> None:
        while len(self.events) > mark:
            self.events.pop()

    def moderation_taken(
        self, actor: Actor, action: str, target: str | None, **detail: Any
    ) -> None:
        self.emit(events.ModerationTaken(actor.room.id, actor.user, action, target, detail))

    def participant_updated(self, room: Room, member: Member, stage_change: bool = False) -> None:
        """Tell the room ``member`` changed; in a big audience a listener's change that is not
        a move on or off the stage goes only to the hosts and the listener."""
        participant = room.participant(member)
        event = messages.ParticipantUpdated(room=room.id, participant=participant)
        if member.on_stage or stage_change or not self.quiet_audience(room):
            self.to_members(room, event)
        else:
            sessions = {m.session for m in room.stage_members.values() if m.role in HOST_ROLES}
            sessions.add(member.session)
            self.send(sessions, event)
        self.emit(events.ParticipantChanged(room.id, participant))

    def hand_queue_changed(self, room: Room) -> None:
        users = room.hands.users()
        listed = users[: messages.MAX_HANDS_LISTED]
        self.to_hosts(room, messages.HandQueue(room=room.id, users=listed, total=len(users)))
        self.emit(events.HandQueueChanged(room.id, list(users)))

    def counts_changed(self, room: Room) -> None:
        self.to_members(room, messages.RoomUpdated(room=room.summary()))

    def counts_later(self, room: Room, now: float) -> None:
        """The counts of a big audience changed: tell the members at most once per
        ``limits.counts_interval`` (the ``COUNTS`` timer sends what is pending)."""
        if room.counts_due is not None:
            return
        due = room.counts_sent_at + self.limits.counts_interval
        if due <= now:
            self.send_counts(room, now)
            return
        room.counts_due = due
        self.push_timer(due, TimerKind.COUNTS, room)

    def send_counts(self, room: Room, now: float) -> None:
        room.counts_due = None
        room.counts_sent_at = now
        if room.state != "closed":
            self.counts_changed(room)

    def room_changed(self, room: Room) -> None:
        self.emit(events.RoomSettingsChanged(room_settings(room)))

    # ------------------------------------------------------------------ lookups

    def find_room(self, room_id: str) -> Room:
        """The live or scheduled room ``room_id``, or CoreError (not found, or closed)."""
        room = self.rooms.get(room_id)
        if room is None:
            raise CoreError(ErrorCode.ROOM_NOT_FOUND, f"no room {room_id}")
        if room.state == "closed":
            raise CoreError(ErrorCode.ROOM_CLOSED, f"room {room_id} is closed")
        return room

    def member_of(self, room: Room, session: int) -> Member | None:
        state = self.sessions.get(session)
        if state is None:
            return None
        member = room.members.get(state.identity.user)
        return member if member is not None and member.session == session else None

    def check_server_ban(self, user: str, now: float) -> None:
        ban = self.server_bans.get(user)
        if ban is not None and ban.active(now):
            raise CoreError(ErrorCode.BANNED, ban_message("this server", ban))


def names_other(actor: Actor, user: str | None) -> bool:
    """Whether a request naming ``user`` acts on someone else than the actor."""
    return user is not None and (actor.member is None or user != actor.user)


class Concern:
    """Base of the concern modules: the context, and short names for its state and helpers."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self.limits = ctx.limits
        self.random_bytes = ctx.random_bytes
        self.forwarder = ctx.forwarder
        self.rooms = ctx.rooms
        self._sessions = ctx.sessions
        self._emit = ctx.emit
        self._send = ctx.send
        self._to_members = ctx.to_members
        self._to_hosts = ctx.to_hosts
        self._moderation = ctx.moderation_taken
        self._participant_updated = ctx.participant_updated
        self._hand_queue_changed = ctx.hand_queue_changed
        self._counts_changed = ctx.counts_changed
        self._room_changed = ctx.room_changed
        self._find_room = ctx.find_room
        self._push_timer = ctx.push_timer

    # Checks shared by the request handlers of several concerns.

    @staticmethod
    def _self(actor: Actor) -> Member:
        if actor.member is None:
            raise CoreError(ErrorCode.INVALID_VALUE, "user is required: operators are not members")
        return actor.member

    _names_other = staticmethod(names_other)

    @staticmethod
    def _present(room: Room, user: str) -> Member:
        member = room.members.get(user)
        if member is None:
            raise CoreError(ErrorCode.PARTICIPANT_NOT_FOUND, f"{user} is not in the room")
        return member

    def _target(
        self, actor: Actor, user: str | None, self_action: Action, other_action: Action
    ) -> tuple[Member, bool]:
        """The member a request acts on -- the caller, or the member it names -- checked against
        the matrix row for that case; the flag says whether it names another member."""
        if self._names_other(actor, user):
            assert user is not None
            target = self._present(actor.room, user)
            check(other_action, actor.role, target.role)
            return target, True
        target = self._self(actor)
        check(self_action, target.role)
        return target, False

    @staticmethod
    def _not_self(actor: Actor, user: str, action: str) -> None:
        if actor.member is not None and user == actor.user:
            raise CoreError(ErrorCode.INVALID_VALUE, f"you cannot {action} yourself")


def ban_message(room: str, ban: Ban) -> str:
    message = f"you are banned from {room}"
    if ban.reason:
        message += f": {ban.reason}"
    if ban.until is None:
        return message + " (permanently)"
    return message + f" (until {ban.until:.0f})"
