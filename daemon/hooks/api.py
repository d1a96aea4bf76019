"""SalonAPI: what a plugin may read and do. Every hook receives the plugin's own instance.

Reads go to the core's current state. Actions go through the request pipeline
(daemon/pipeline.py) as ``plugin:<name>``, like a client's or an operator's request: the
request policy (every plugin's ``authorize`` and moderation hooks) reviews them, the core
performs them with an operator's rights, and they return once the store has committed them.
Each one is audited: a ``ModerationTaken`` event whose actor is ``plugin:<name>``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from salon.daemon.config import Config
from salon.daemon.core import CoreError, Identity
from salon.daemon.wire import messages

from .results import AudioLevel
from .settings import PluginSettings

if TYPE_CHECKING:
    from salon.daemon.recording.monitor import AudioMonitor

    from .manager import PluginHost

T = TypeVar("T")

PLUGIN_ACTOR_PREFIX = "plugin:"
"""Actor of the actions a plugin takes: ``plugin:<name>`` in ModerationTaken and events."""


class SalonAPI:
    """One plugin's handle on the daemon (``api`` in every hook)."""

    def __init__(self, host: PluginHost, name: str, settings: PluginSettings) -> None:
        self._host = host
        self.name = name
        """The plugin's name: its entry point name, and its ``[plugins.<name>]`` table."""
        self.settings = settings
        """The plugin's ``[plugins.<name>]`` table, with typed getters."""
        self.log = logging.getLogger(f"salon.plugins.{name}")
        """A logger named after the plugin."""
        self.actor = Identity(
            user=PLUGIN_ACTOR_PREFIX + name, display_name=name, verified={}, operator=True
        )
        """The identity the plugin's actions are performed and audited as."""

    # ------------------------------------------------------------------ the daemon

    @property
    def config(self) -> Config:
        """The daemon's whole configuration (read-only)."""
        return self._host.config

    @property
    def data_dir(self) -> Path:
        """A directory of the plugin's own, ``<state_dir>/plugins/<name>``, created on use."""
        path = self._host.config.server.state_dir / "plugins" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def now() -> float:
        """The daemon's clock (seconds since the epoch), as the core uses it."""
        return time.time()

    # ------------------------------------------------------------------ reading

    def rooms(self, topic: str | None = None) -> list[messages.RoomSummary]:
        """Live rooms (most members first), then scheduled ones; only ``topic``'s if given."""
        return self._host.core.list_rooms(topic)

    def room(self, room: str) -> messages.RoomSummary | None:
        """A room's summary, or None if there is no such room or it is closed."""
        found = self._host.core.rooms.get(room)
        if found is None or found.state == "closed":
            return None
        return found.summary()

    def room_state(self, room: str) -> messages.RoomSnapshot | None:
        """Everything about a room as an operator sees it (participants, hand queue, knocks)."""
        found = self._host.core.rooms.get(room)
        if found is None or found.state == "closed":
            return None
        return self._host.core.room_snapshot(room)

    def levels(self, room: str) -> list[AudioLevel]:
        """The current audio level of each stage member sending audio, loudest first."""
        return self._host.sample_levels(room)

    # ------------------------------------------------------------------ acting

    async def request(self, room: str | None, request: messages.Request) -> dict[str, Any]:
        """Perform any operator request on ``room``; returns the result once it is stored,
        raises CoreError (a plugin's refusal included)."""
        from salon.daemon.pipeline import Actor
        from salon.daemon.store.base import StoreUnavailable

        try:
            result = await self._host.pipeline.perform(Actor.plugin(self.actor), room, request)
        except StoreUnavailable as exc:
            raise CoreError(messages.ErrorCode.STORE_UNAVAILABLE, f"not stored: {exc}") from exc
        assert result is not None  # only a client's request is abandoned when it leaves
        return result

    async def invite_to_speak(self, room: str, user: str) -> dict[str, Any]:
        """Invite a listener onto the stage (they accept or decline, as with a host)."""
        return await self.request(room, messages.InviteToSpeak(id=0, user=user))

    async def move_to_audience(self, room: str, user: str) -> dict[str, Any]:
        """Move a stage member back to the audience."""
        return await self.request(room, messages.MoveToAudience(id=0, user=user))

    async def mute(self, room: str, user: str) -> dict[str, Any]:
        """Mute a stage member; the server drops their audio until a host lifts it."""
        return await self.request(room, messages.Mute(id=0, user=user))

    async def unmute(self, room: str, user: str) -> dict[str, Any]:
        """Lift a moderator mute (the member still opens their own microphone)."""
        return await self.request(room, messages.Unmute(id=0, user=user))

    async def lower_hand(self, room: str, user: str) -> dict[str, Any]:
        """Lower a listener's raised hand."""
        return await self.request(room, messages.LowerHand(id=0, user=user))

    async def remove(self, room: str, user: str, reason: str = "") -> dict[str, Any]:
        """Remove a member from the room (they may come back)."""
        return await self.request(room, messages.Remove(id=0, user=user, reason=reason))

    async def approve_knock(self, room: str, request_id: str) -> dict[str, Any]:
        """Admit a knocking requester."""
        return await self.request(room, messages.ApproveKnock(id=0, request_id=request_id))

    async def deny_knock(self, room: str, request_id: str, reason: str = "") -> dict[str, Any]:
        """Refuse a knocking requester."""
        return await self.request(
            room, messages.DenyKnock(id=0, request_id=request_id, reason=reason)
        )

    async def update_room(self, room: str, **fields: Any) -> dict[str, Any]:
        """Change a room's settings (title, topics, policy, max_speakers, ...)."""
        return await self.request(room, messages.UpdateRoom(id=0, **fields))

    async def close_room(self, room: str) -> dict[str, Any]:
        """Close a room for everyone."""
        return await self.request(room, messages.CloseRoom(id=0))

    async def try_request(
        self, room: str | None, request: messages.Request
    ) -> dict[str, Any] | None:
        """Like :meth:`request`, but a refusal is logged and gives None instead of raising."""
        try:
            return await self.request(room, request)
        except CoreError as exc:
            self.log.info("%s on %s refused: %s", type(request).__name__, room, exc.message)
            return None

    def count_drop(self, reason: str, amount: int = 1) -> None:
        """Count something the plugin dropped in ``stats.drops["<name>:<reason>"]``
        (shown by the admin API and metrics)."""
        self._host.stats.count_drop(f"{self.name}:{reason}", amount)

    def count_abuse(self, limit: str, amount: int = 1) -> None:
        """Count a refusal by a per-address abuse limit in ``stats.abuse[limit]``
        (``salon_abuse_refusals_total{limit}``)."""
        self._host.stats.abuse[limit] += amount

    # ------------------------------------------------------------------ background work

    def create_task(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run a coroutine in the background; cancelled at shutdown, failures logged and
        counted under ``plugin_errors["task"]``."""
        return self._host.create_task(self.name, coroutine)

    def subscribe_audio_levels(self, room: str | None = None) -> None:
        """Receive :func:`audio_levels` for ``room`` (None: every live room) every 200 ms."""
        self._host.subscribe_levels(self.name, room)

    def unsubscribe_audio_levels(self, room: str | None = None) -> None:
        """Stop a subscription made with :meth:`subscribe_audio_levels`."""
        self._host.unsubscribe_levels(self.name, room)

    def monitor_audio(self) -> AudioMonitor:
        """Start measuring every stage member's level on their *decoded* audio, not the level
        senders write in their packets (which a client can fake). The monitor decrypts and
        decodes on its own thread, off the forwarding path (daemon/recording/monitor.py); read
        it with ``monitor.levels(room)`` and stop it with ``monitor.stop()`` at ``shutdown``."""
        from salon.daemon.recording.monitor import AudioMonitor

        monitor = AudioMonitor(self._host.core)
        self._host.pipeline.observers.append(monitor.on_core_event)
        monitor.start()
        return monitor
