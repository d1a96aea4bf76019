"""Floor control: optional stage policies, applied through the operator path.

::

    [plugins.floor_control]
    rooms = []              # rooms the policies apply to; empty: every room
    auto_advance = true     # when the stage has room, invite the first raised hand
    invite_timeout = 30.0   # seconds to answer before the hand is lowered and the next invited
    turn_seconds = 0.0      # > 0: a speaker (not a host) returns to the audience after this long
    one_speaker = false     # at most one speaker besides the owner and moderators
    tick = 1.0              # seconds between two checks of every managed room

Every action goes through :class:`~salon.daemon.hooks.SalonAPI` (``invite_to_speak``,
``move_to_audience``, ``lower_hand``): the core checks it as an operator action and audits it
(``moderation_taken`` with actor ``plugin:floor_control``). ``one_speaker`` also refuses, through
the ``promotion`` hook, an invitation or acceptance that would put a second speaker on stage.
"""

from __future__ import annotations

import asyncio
import time

from salon.daemon.core import Identity
from salon.daemon.hooks import Deny, SalonAPI, hookimpl
from salon.daemon.wire.messages import InviteToSpeak, LowerHand, MoveToAudience, RoomSnapshot

STAGE = ("owner", "moderator", "speaker")


class _RoomFloor:
    """What the plugin remembers about one room."""

    __slots__ = ("invited", "turns")

    def __init__(self) -> None:
        self.turns: dict[str, float] = {}
        """Speaker -> when their turn started (monotonic clock)."""
        self.invited: dict[str, float] = {}
        """User -> when the plugin invited them to speak."""


class FloorControl:
    """Hand-queue auto-advance, timed turns and one speaker at a time."""

    def __init__(self, api: SalonAPI) -> None:
        settings = api.settings
        settings.check_known(
            ("rooms", "auto_advance", "invite_timeout", "turn_seconds", "one_speaker", "tick")
        )
        self.api = api
        self.rooms = frozenset(settings.strings("rooms"))
        self.auto_advance = settings.flag("auto_advance", True)
        self.invite_timeout = settings.number("invite_timeout", 30.0, allow_minimum=False)
        self.turn_seconds = settings.number("turn_seconds", 0.0)
        self.one_speaker = settings.flag("one_speaker", False)
        self.tick = settings.number("tick", 1.0, allow_minimum=False)
        self.floors: dict[str, _RoomFloor] = {}
        self.clock = time.monotonic

    def manages(self, room: str) -> bool:
        return not self.rooms or room in self.rooms

    def floor(self, room: str) -> _RoomFloor:
        floor = self.floors.get(room)
        if floor is None:
            floor = self.floors[room] = _RoomFloor()
        return floor

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def startup(self) -> None:
        self.api.create_task(self._run())

    @hookimpl
    def promotion(self, room: str, target: str, role: str) -> Deny | None:
        if not (self.one_speaker and role == "speaker" and self.manages(room)):
            return None
        state = self.api.room_state(room)
        if state is None:
            return None
        others = [p.user for p in state.participants if p.role == "speaker" and p.user != target]
        if others:
            return Deny(f"one speaker at a time: {others[0]} has the floor")
        return None

    @hookimpl
    def raise_hand(self, identity: Identity, room: str) -> None:
        if self.auto_advance and self.manages(room):
            # The hook runs before the core queues the hand: look again right after.
            self.api.create_task(self._soon(room))

    @hookimpl
    async def role_changed(self, room: str, user: str, old: str, new: str) -> None:
        if not self.manages(room):
            return
        floor = self.floor(room)
        floor.invited.pop(user, None)
        if new == "speaker":
            floor.turns[user] = self.clock()
        elif old == "speaker":
            floor.turns.pop(user, None)
        await self.check(room)

    @hookimpl
    async def participant_left(self, room: str, user: str) -> None:
        floor = self.floors.get(room)
        if floor is not None:
            floor.turns.pop(user, None)
            floor.invited.pop(user, None)
            await self.check(room)

    @hookimpl
    def room_closed(self, room: str) -> None:
        self.floors.pop(room, None)

    # ------------------------------------------------------------------ the policies

    async def _soon(self, room: str) -> None:
        await asyncio.sleep(0.05)
        await self.check(room)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            for summary in self.api.rooms():
                if summary.state == "live" and self.manages(summary.room):
                    await self.check(summary.room)

    async def check(self, room: str) -> None:
        """Apply the policies to ``room`` now."""
        state = self.api.room_state(room)
        if state is None:
            self.floors.pop(room, None)
            return
        now = self.clock()
        floor = self.floor(room)
        if self.turn_seconds > 0:
            await self._end_turns(room, state, floor, now)
            state = self.api.room_state(room) or state
        if self.auto_advance:
            await self._advance(room, state, floor, now)

    async def _end_turns(
        self, room: str, state: RoomSnapshot, floor: _RoomFloor, now: float
    ) -> None:
        for participant in state.participants:
            if participant.role != "speaker":
                continue
            started = floor.turns.setdefault(participant.user, now)
            if now - started >= self.turn_seconds:
                floor.turns.pop(participant.user, None)
                self.api.log.info("%s: %s's turn is over", room, participant.user)
                await self.api.try_request(room, MoveToAudience(id=0, user=participant.user))

    async def _advance(self, room: str, state: RoomSnapshot, floor: _RoomFloor, now: float) -> None:
        on_stage = [p for p in state.participants if p.role in STAGE]
        speakers = [p for p in on_stage if p.role == "speaker"]
        queue = state.hand_queue
        for user, at in list(floor.invited.items()):
            if user not in queue:
                del floor.invited[user]
            elif now - at >= self.invite_timeout:
                # No answer: lower the hand so that the queue moves on.
                del floor.invited[user]
                await self.api.try_request(room, LowerHand(id=0, user=user))
        pending = len(floor.invited)
        free = state.summary.max_speakers - len(on_stage) - pending
        if self.one_speaker:
            free = min(free, 1 - len(speakers) - pending)
        for user in queue:
            if free <= 0:
                break
            if user in floor.invited:
                continue
            if await self.api.try_request(room, InviteToSpeak(id=0, user=user)) is not None:
                floor.invited[user] = now
                free -= 1
