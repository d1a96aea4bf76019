"""SalonCore: rooms, roles and policies as a sans-I/O state machine.

Inputs are method calls carrying the current time (``connect``, ``handle_request``,
``receive_datagram``, ``handle_timer``...); outputs are pulled with :meth:`SalonCore.next_event`
(control events to deliver, state changes for the upper layers) and :meth:`SalonCore.get_timer`.
Nothing here touches a socket, a clock or an event loop, so every rule is testable in memory.

A refused request raises :class:`CoreError` and changes nothing: each handler validates
everything before it mutates, and events queued by a failed request are discarded.

``SalonCore`` is a facade: the rules live in one module per concern (:mod:`.membership`,
:mod:`.knocks`, :mod:`.stage`, :mod:`.moderation`, :mod:`.invites`, :mod:`.flows`,
:mod:`.recording_control`, :mod:`.lifecycle`, :mod:`.schedule`, :mod:`.speaking_updates`), which
share one :class:`~.context.CoreContext` (rooms, sessions, events outbox, timers, forwarder).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode, to_builtins

from . import events
from .context import Actor, CoreContext, Session, TimerKind, names_other
from .errors import CoreError
from .flows import Flows
from .forwarder import Outlet
from .identity import Identity
from .invites import Invites
from .knocks import Knocks
from .lifecycle import CLOSED_ROOMS_KEPT, RoomLifecycle
from .limits import Limits
from .membership import Membership
from .moderation import Moderation
from .permissions import OPERATOR, check_caller
from .reception import Reception
from .recording_control import RECORDING_ID_BYTES, RecordingControl
from .records import RoomRecord
from .results import Result
from .room import Ban
from .schedule import Schedule
from .speaking_updates import MemberLevel, SpeakingUpdates
from .stage import Stage

__all__ = ["CLOSED_ROOMS_KEPT", "RECORDING_ID_BYTES", "MemberLevel", "SalonCore", "TimerKind"]


class SalonCore:
    """Every room of the server, the sessions in them and the media forwarder."""

    def __init__(
        self, limits: Limits | None = None, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        ctx = CoreContext(limits if limits is not None else Limits(), random_bytes)
        self._ctx = ctx
        self.limits = ctx.limits
        self.random_bytes = random_bytes
        self.forwarder = ctx.forwarder
        self.rooms = ctx.rooms
        """Rooms by id: live, scheduled and recently closed ones."""
        self.server_bans = ctx.server_bans
        """Server-wide bans by user id (see :meth:`ban_user_globally`); expired ones may linger."""
        self._sessions = ctx.sessions
        self._timers = ctx.timers
        ctx.membership = self._membership = Membership(ctx)
        ctx.knocks = self._knocks = Knocks(ctx)
        ctx.stage = self._stage = Stage(ctx)
        ctx.moderation = self._moderation = Moderation(ctx)
        ctx.invites = self._invites = Invites(ctx)
        ctx.flows = self._flows = Flows(ctx)
        ctx.recording = self._recording = RecordingControl(ctx)
        ctx.reception = self._reception = Reception(ctx)
        ctx.lifecycle = self._lifecycle = RoomLifecycle(ctx)
        ctx.schedule = self._schedule = Schedule(ctx)
        ctx.speaking = self._speaking = SpeakingUpdates(ctx)
        stage, moderation, invites = self._stage, self._moderation, self._invites
        knocks, recording, lifecycle = self._knocks, self._recording, self._lifecycle
        self._room_handlers: dict[type, Callable[[Actor, Any, float], Result]] = {
            messages.RaiseHand: stage.raise_hand,
            messages.LowerHand: stage.lower_hand,
            messages.InviteToSpeak: stage.invite_to_speak,
            messages.AcceptSpeak: stage.accept_speak,
            messages.DeclineSpeak: stage.decline_speak,
            messages.MoveToAudience: stage.move_to_audience,
            messages.Mute: moderation.mute,
            messages.Unmute: moderation.unmute,
            messages.Remove: moderation.remove,
            messages.Ban: moderation.ban,
            messages.Unban: moderation.unban,
            messages.Promote: stage.promote,
            messages.Demote: stage.demote,
            messages.TransferOwnership: stage.transfer_ownership,
            messages.UpdateRoom: lifecycle.update_room,
            messages.CloseRoom: lifecycle.close_room,
            messages.CreateInvite: invites.create_invite,
            messages.RevokeInvite: invites.revoke_invite,
            messages.ListInvites: invites.list_invites,
            messages.ListParticipants: self._membership.list_participants,
            messages.ApproveKnock: knocks.approve_knock,
            messages.DenyKnock: knocks.deny_knock,
            messages.StartRecording: recording.start_recording,
            messages.StopRecording: recording.stop_recording,
            messages.RecordingConsent: recording.recording_consent,
            messages.ReceiverReport: self._reception.receiver_report,
        }

    # ------------------------------------------------------------------ sessions

    def connect(
        self,
        session: int,
        identity: Identity,
        now: float,
        relayed: bool = False,
        *,
        red: bool = False,
        red_flow: bool = False,
    ) -> None:
        """An authenticated session appears; it gets an outlet for media.

        ``relayed``: the session's client is connected to another node of a cluster, which
        receives the room's media once through the room's relay outlet (:meth:`add_relay`), so
        this session's own outlet never joins the room's forwarding group.
        ``red``: the client decodes RED payloads (PROTOCOL.md 11.9), so speakers may send them.
        ``red_flow``: the client sends a redundancy flow when asked and uses one (11.10).
        """
        self._membership.connect(session, identity, now, relayed, red=red, red_flow=red_flow)

    def disconnect(self, session: int, now: float) -> None:
        """The session is gone: it leaves its room or withdraws its knock. Never raises."""
        self._membership.disconnect(session, now)

    def outlet(self, session: int) -> Outlet | None:
        """The session's media queue, or None for an unknown session."""
        state = self._sessions.get(session)
        return state.outlet if state is not None else None

    def session_room(self, session: int) -> str | None:
        """The room the session is a member of (not one it is knocking on)."""
        state = self._sessions.get(session)
        if state is None or state.room is None:
            return None
        return state.room.id

    def identity(self, session: int) -> Identity | None:
        state = self._sessions.get(session)
        return state.identity if state is not None else None

    # ------------------------------------------------------------------ requests

    def handle_request(
        self,
        session: int,
        request: messages.Request,
        now: float,
        *,
        trust: list[str] | None = None,
        auto_approve: bool = False,
    ) -> dict[str, Any]:
        """Perform a client request; return the ``result`` of the ok reply or raise CoreError.

        ``trust`` holds the plugins' annotations attached to a knock (``JoinRequestInfo.trust``).
        ``auto_approve`` (a plugin vouched for the requester) admits a join that would knock on
        an approval room directly, without asking the hosts. The result is the typed
        :mod:`.results` value as plain data, the ``result`` of the ``ok`` reply.
        """
        state = self._sessions.get(session)
        if state is None:
            raise CoreError(ErrorCode.NOT_AUTHENTICATED, "session is not connected")
        ctx = self._ctx
        mark = len(ctx.events)
        try:
            result = self._dispatch(session, state, request, now, trust or [], auto_approve)
        except CoreError:
            ctx.discard_events(mark)
            raise
        self._speaking.flush_speaking(now)
        return to_builtins(result)

    def check_session_state(self, session: int, request: messages.Request) -> None:
        """Raise the session-state refusal ``request`` would get (PROTOCOL.md 3.6, step 4).

        The server asks before plugins review a request, so that a plugin's refusal never
        hides that the request was out of place; the handlers check the same again.
        """
        state = self._sessions.get(session)
        if state is None:
            raise CoreError(ErrorCode.NOT_AUTHENTICATED, "session is not connected")
        kind = type(request)
        if kind is messages.Join:
            if state.knock is not None and state.knock_room is not None:
                raise CoreError(
                    ErrorCode.KNOCK_PENDING, f"you are already knocking on {state.knock_room.id}"
                )
            if state.room is not None:
                raise CoreError(ErrorCode.ALREADY_IN_ROOM, f"you are already in {state.room.id}")
        elif kind is messages.CancelKnock:
            if state.knock is None or state.knock_room is None:
                raise CoreError(ErrorCode.NO_KNOCK, "you are not knocking")
        elif kind is messages.Leave:
            if state.knock is None and state.room is None:
                raise CoreError(ErrorCode.NOT_IN_ROOM, "you are not in a room")
        elif kind in self._room_handlers and state.room is None:
            raise CoreError(ErrorCode.NOT_IN_ROOM, "you are not in a room")

    def admin_request(
        self, actor: Identity, room: str | None, request: messages.Request, now: float
    ) -> dict[str, Any]:
        """Perform a request as an operator, with owner rights in ``room`` without being in it.

        ``CreateRoom`` ignores ``room`` and makes the operator the owner of record.
        """
        if not actor.operator:
            raise CoreError(ErrorCode.NOT_PERMITTED, "only an operator may use the admin path")
        ctx = self._ctx
        mark = len(ctx.events)
        try:
            result = self._admin_dispatch(actor, room, request, now)
        except CoreError:
            ctx.discard_events(mark)
            raise
        self._speaking.flush_speaking(now)
        return to_builtins(result)

    def _dispatch(
        self,
        session: int,
        state: Session,
        request: Any,
        now: float,
        trust: list[str],
        auto_approve: bool = False,
    ) -> Result:
        kind = type(request)
        user = state.identity.user
        if kind is messages.Join:
            return self._membership.join(session, state, request, now, trust, auto_approve)
        if kind is messages.Leave:
            return self._membership.leave(state, now)
        if kind is messages.CancelKnock:
            return self._knocks.cancel_knock(state)
        if kind is messages.CreateRoom:
            return self._lifecycle.create_room(user, request, now, operator=False)
        if kind is messages.StartRoom:
            return self._lifecycle.start_room(user, request.room, now, operator=False)
        if kind is messages.SubscribeRoom:
            return self._schedule.subscribe(user, request.room, now)
        if kind is messages.UnsubscribeRoom:
            return self._schedule.unsubscribe(user, request.room)
        if kind in (messages.ListRooms, messages.GetRoom):
            return self._lifecycle.directory_request(request)
        handler = self._room_handlers.get(kind)
        if handler is None:
            raise CoreError(
                ErrorCode.BAD_MESSAGE, f"{kind.__name__} is handled by the session layer"
            )
        room = state.room
        if room is None:
            raise CoreError(ErrorCode.NOT_IN_ROOM, "you are not in a room")
        member = room.members[user]
        actor = Actor(user, member.role, room, member)
        check_caller(request, member.role, names_other(actor, getattr(request, "user", None)))
        return handler(actor, request, now)

    def _admin_dispatch(
        self, actor: Identity, room_id: str | None, request: Any, now: float
    ) -> Result:
        kind = type(request)
        if kind is messages.CreateRoom:
            return self._lifecycle.create_room(actor.user, request, now, operator=True)
        if kind is messages.StartRoom:
            return self._lifecycle.start_room(actor.user, request.room, now, operator=True)
        if kind in (messages.ListRooms, messages.GetRoom):
            return self._lifecycle.directory_request(request)
        handler = self._room_handlers.get(kind)
        if handler is None:
            raise CoreError(ErrorCode.INVALID_VALUE, f"{kind.__name__} is not an operator action")
        if room_id is None:
            raise CoreError(ErrorCode.INVALID_VALUE, "room is required")
        room = self._ctx.find_room(room_id)
        return handler(Actor(actor.user, OPERATOR, room, None), request, now)

    # ------------------------------------------------------------------ outputs and views

    def next_event(self) -> events.CoreEvent | None:
        """The next output, oldest first, or None."""
        queued = self._ctx.events
        return queued.popleft() if queued else None

    def list_rooms(self, topic: str | None = None) -> list[messages.RoomSummary]:
        """Live rooms (most members first), then scheduled ones (soonest first)."""
        return self._lifecycle.list_rooms(topic)

    def room_snapshot(self, room: str, viewer: int | None = None) -> messages.RoomSnapshot:
        """The room as session ``viewer`` sees it; None is the operator's view (everything)."""
        found = self.rooms.get(room)
        if found is None:
            raise CoreError(ErrorCode.ROOM_NOT_FOUND, f"no room {room}")
        listeners = self.limits.snapshot_listeners
        if viewer is None:
            return found.snapshot(None, True, listeners)
        member = self._ctx.member_of(found, viewer)
        return found.snapshot(member, member is not None and member.is_host, listeners)

    # ------------------------------------------------------------------ queries

    def would_knock(self, room: str, user: str, invite: str | None, now: float) -> bool:
        """Whether ``user`` joining ``room`` (with ``invite``) now would knock rather than enter.

        False too when the join would be refused (unknown or closed room, a ban, not started):
        the same rule :meth:`handle_request` applies to a ``join``, asked without joining.
        """
        return self._membership.would_knock(room, user, invite, now)

    def levels(self, room: str) -> list[MemberLevel]:
        """Every stage member's current audio level in ``room``, loudest first ([] if unknown)."""
        return self._speaking.levels(room)

    def usable_invites(self, room: str, now: float) -> list[messages.InviteInfo]:
        """The invites of ``room`` that would admit someone at ``now`` (``list_invites``)."""
        found = self.rooms.get(room)
        return [] if found is None else self._invites.usable(found, now)

    def active_bans(self, room: str, now: float) -> dict[str, Ban]:
        """The bans of ``room`` in force at ``now``, by user id."""
        found = self.rooms.get(room)
        if found is None:
            return {}
        return {user: ban for user, ban in found.bans.items() if ban.active(now)}

    # ------------------------------------------------------------------ media

    def receive_datagram(self, session: int, data: bytes, now: float) -> list[Outlet]:
        """Forward a media datagram; return the outlets that received a copy."""
        outlets = self.forwarder.forward(session, data, now)
        if self._ctx.speaking_dirty:
            self._speaking.flush_speaking(now)
        return outlets

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called (it may find nothing due)."""
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        """Expire knocks and bans, close abandoned rooms, send reminders, pace speaking."""
        self._ctx.run_due_timers(now)
        self._speaking.flush_speaking(now)

    # ------------------------------------------------------------------ recording and monitors

    def stop_recording(
        self, room_id: str, recording_id: str, reason: str, now: float, **detail: Any
    ) -> bool:
        """End a recording from outside a request (its recorder failed, it reached a bound);
        False if not running.

        The room's members get ``recording_stopped`` with ``reason``, as after a host's stop;
        the audit log gets a ``stop_recording`` by ``salond`` with ``reason`` and ``detail``.
        """
        return self._recording.abort_recording(room_id, recording_id, reason, now, **detail)

    def set_realtime(self, session: int, realtime: bool) -> bool:
        """Whether a room member's outlet gets the room's datagrams (stream mode: it does not).

        Only the audience may leave real time (the stage must hear itself without delay).
        Returns whether the member now receives as asked; False when the session is in no room
        or is on the stage and asked to leave real time.
        """
        state = self._sessions.get(session)
        room = state.room if state is not None else None
        if state is None or room is None:
            return False
        member = room.members.get(state.identity.user)
        if member is None or member.session != session:
            return False
        receiving = session in self.forwarder.group_sessions(room.id)
        if realtime and not receiving and not state.relayed:
            self.forwarder.join(room.id, state.outlet)
            self._reception.receiver_added(room, member)
        elif not realtime and receiving:
            if member.on_stage:
                return False
            self.forwarder.leave(room.id, session)
            self._reception.receiver_removed(room, session)
            state.outlet.queue.clear()
        return True

    def add_relay(self, room: str, limit: int) -> Outlet:
        """An outlet that gets every flow of ``room`` once, for the other nodes of a cluster.

        It is one more recipient of the room's forwarding group (with a session number no real
        session has); the caller drains it. It stays until :meth:`remove_relay` or the room
        closes.
        """
        found = self.rooms.get(room)
        if found is None or found.state != "live":
            raise CoreError(ErrorCode.ROOM_NOT_FOUND, f"no live room {room}")
        outlet = Outlet(next(self._ctx.tap_sessions), limit)
        self.forwarder.join(room, outlet)
        return outlet

    def remove_relay(self, room: str, outlet: Outlet) -> None:
        """Stop a relay outlet made by :meth:`add_relay`."""
        self.forwarder.leave(room, outlet.session)
        outlet.queue.clear()

    def add_monitor(self, limit: int) -> tuple[Outlet, list[tuple[str, messages.MediaKey]]]:
        """A tap on every media flow of every room, now and later, for audio analysis.

        Returns the outlet (the caller drains it off the forwarding path) and the keys of the
        flows open now; later ones come as ``FlowOpened`` events.
        """
        return self._recording.add_monitor(limit)

    def remove_monitor(self, outlet: Outlet) -> None:
        """Stop a tap made by :meth:`add_monitor`."""
        self._recording.remove_monitor(outlet)

    # ------------------------------------------------------------------ records and restore

    def room_record(self, room: str) -> RoomRecord:
        """A copy of everything of ``room`` that a store keeps (see :mod:`.records`)."""
        return self._lifecycle.room_record(room)

    def restore_room(self, record: RoomRecord, now: float) -> None:
        """Bring back a stored room, normally before the first session connects.

        See :meth:`.lifecycle.RoomLifecycle.restore_room`.
        """
        self._lifecycle.restore_room(record, now)

    def gate_timers(self, gate: Callable[[str], bool] | None) -> None:
        """Run a room's timers only while ``gate(room id)`` says so (a cluster node runs only
        those of the rooms it is home of, docs/cluster.md); None: all of them."""
        self._ctx.timer_gate = gate

    def forget_room(self, room_id: str) -> bool:
        """Drop a room without a member or a knock from this server silently (no event,
        nothing stored, its timers void): another cluster node runs it (docs/cluster.md).
        False if it has members or knocks, or is not here."""
        room = self._ctx.rooms.get(room_id)
        if room is None or room.members or room.knocks or room.state == "closed":
            return False
        del self._ctx.rooms[room_id]
        return True

    def restore_server_ban(self, user: str, ban: Ban, now: float) -> None:
        """Bring back a stored server-wide ban (ignored if it has expired). Emits nothing."""
        self._moderation.restore_server_ban(user, ban, now)

    # ------------------------------------------------------------------ server-wide bans

    def ban_user_globally(
        self,
        actor: Identity,
        user: str,
        now: float,
        *,
        reason: str = "",
        duration: float | None = None,
    ) -> dict[str, Any]:
        """Operator action: ban ``user`` from the whole server, for ``duration`` s or for good.

        See :meth:`.moderation.Moderation.ban_user_globally`. Returns ``{"user", "until"}``.
        """
        result = self._moderation.ban_user_globally(
            actor, user, now, reason=reason, duration=duration
        )
        return to_builtins(result)

    def unban_user_globally(self, actor: Identity, user: str, now: float) -> dict[str, Any]:
        """Operator action: lift ``user``'s server-wide ban (``participant_not_found`` if none).

        Emits ``BanChanged`` (room None, ban None) and ``ModerationTaken`` (room ``""``, action
        ``server_unban``). Returns ``{}``.
        """
        return to_builtins(self._moderation.unban_user_globally(actor, user, now))

    def active_server_bans(self, now: float) -> dict[str, Ban]:
        """The server-wide bans in force at ``now``, by user id."""
        return self._moderation.active_server_bans(now)
