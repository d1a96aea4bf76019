"""Loudness guard: mutes a stage member who stays too loud, and tells the room's hosts.

::

    [plugins.loudness_guard]
    max_level = -6.0       # dBov; louder than this counts as too loud (0 is full scale)
    duration = 3.0         # seconds a speaker may stay too loud before being muted
    rooms = []             # rooms it guards; empty: every room
    spare_hosts = true     # never mute the room's owner and moderators
    decode = true          # measure the decoded audio; false: trust the levels senders report

In an open room anyone given the stage can blast noise or a full-scale tone at everybody. The
guard checks every stage member's level every 200 ms (the
:func:`~salon.daemon.hooks.hookspecs.audio_levels` hook is its clock). With ``decode`` (the
default) the level is measured on the audio itself: an audio monitor
(:meth:`~salon.daemon.hooks.SalonAPI.monitor_audio`) decrypts and decodes every stage member's
packets on its own thread, off the forwarding path, so a client that writes a false RFC 6464
level in its packets is caught all the same. Without it the guard uses the levels senders
report, which costs nothing but trusts them. When a member stays above ``max_level`` for
``duration`` seconds, the guard mutes them as an operator action. The member gets ``muted``
and the hosts ``member_muted``, both with ``by`` = ``plugin:loudness_guard`` and the reason; the
action is audited (``moderation_taken``). A host lifts the mute with ``unmute`` as usual; a
member who is still too loud is muted again after ``duration``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from salon.daemon.hooks import AudioLevel, SalonAPI, hookimpl
from salon.daemon.wire.messages import Mute

if TYPE_CHECKING:
    from salon.daemon.recording.monitor import AudioMonitor

HOSTS = ("owner", "moderator")


class LoudnessGuard:
    """Mutes stage members whose level stays above ``max_level`` for ``duration`` seconds."""

    def __init__(self, api: SalonAPI) -> None:
        settings = api.settings
        settings.check_known(("max_level", "duration", "rooms", "spare_hosts", "decode"))
        self.api = api
        max_level = settings.number("max_level", -6.0, minimum=-127.0)
        if max_level > 0:
            raise settings.problem("max_level", "must be at most 0 (dBov: 0 is full scale)")
        self.max_level = max_level
        self.duration = settings.number("duration", 3.0)
        self.rooms = frozenset(settings.strings("rooms"))
        self.spare_hosts = settings.flag("spare_hosts", True)
        self.decode = settings.flag("decode", True)
        self.monitor: AudioMonitor | None = None
        self._loud_since: dict[tuple[str, str], float] = {}
        """(room, user) -> when the member was first seen too loud in this stretch."""
        self._muted: set[tuple[str, str]] = set()
        """Members muted during their current loud stretch (not muted twice for it)."""
        self.mutes = 0
        """Members muted since start-up."""

    def too_loud(self, level: AudioLevel) -> bool:
        # RFC 6464 levels are -dBov: 0 is the loudest. A member who stopped sending keeps
        # their last level but is no longer speaking, so only speakers count.
        return level.speaking and -level.level > self.max_level

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def startup(self) -> None:
        if self.decode:
            self.monitor = self.api.monitor_audio()
        if self.rooms:
            for room in self.rooms:
                self.api.subscribe_audio_levels(room)
        else:
            self.api.subscribe_audio_levels(None)

    @hookimpl
    def shutdown(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None

    @hookimpl
    async def audio_levels(self, room: str, levels: list[AudioLevel]) -> None:
        now = self.api.now()
        if self.monitor is not None:
            # Measured in the last 0.5 s on the decoded audio: a muted or silent member's
            # packets stop coming (DTX), so they drop out.
            measured = self.monitor.levels(room).values()
            loud = {m.user for m in measured if -m.level > self.max_level}
        else:
            loud = {level.user for level in levels if self.too_loud(level)}
        for key in [k for k in self._loud_since if k[0] == room and k[1] not in loud]:
            del self._loud_since[key]
            self._muted.discard(key)
        for user in loud:
            key = (room, user)
            since = self._loud_since.setdefault(key, now)
            if now - since >= self.duration and key not in self._muted:
                self._muted.add(key)
                await self._mute(room, user, now - since)

    @hookimpl
    def participant_left(self, room: str, user: str) -> None:
        self._forget(room, user)

    @hookimpl
    def room_closed(self, room: str) -> None:
        for key in [k for k in self._loud_since if k[0] == room]:
            self._forget(*key)

    # ------------------------------------------------------------------ acting

    def _forget(self, room: str, user: str) -> None:
        self._loud_since.pop((room, user), None)
        self._muted.discard((room, user))

    async def _mute(self, room: str, user: str, seconds: float) -> None:
        if self.spare_hosts:
            state = self.api.room_state(room)
            if state is None:
                return
            role = next((p.role for p in state.participants if p.user == user), None)
            if role is None or role in HOSTS:
                return
        reason = f"too loud: above {self.max_level:g} dBov for {seconds:.1f} s"
        if await self.api.try_request(room, Mute(id=0, user=user, reason=reason)) is not None:
            self.mutes += 1
            self.api.log.info("muted %s in %s (%s)", user, room, reason)
