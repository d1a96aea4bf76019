"""Helpers for the plugin tests: a daemon with test plugins, a recording plugin, a live stage.

Plugins defined by a test are registered on the daemon's PluginHost before it starts, exactly
as an entry point's plugin would be; bundled plugins are enabled through configuration.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salon.client.audiofile import frames
from salon.client.connection import RequestError, SalonClient
from salon.client.room_audio import RoomAudio
from salon.daemon.config import load_config, resolve_paths
from salon.daemon.hooks import hookimpl
from tests.audio_checks import tone
from tests.conftest import InProcessDaemon

WAIT = 10.0
"""Safety net for every wait in these tests (never a measure of speed)."""


@contextlib.asynccontextmanager
async def plugin_daemon(
    tmp_path: Path, plugins: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[InProcessDaemon]:
    """A salond in this event loop with ``plugins`` (name -> plugin) registered before start.

    ``overrides`` are dotted configuration keys, given with ``**{"plugins.enabled": "x"}``.
    """
    from salon.daemon.app import Daemon

    values = {
        "server.port": 0,
        "server.state_dir": str(tmp_path / "state"),
        "admin.enabled": False,
        **overrides,
    }
    daemon = Daemon(resolve_paths(load_config(None, values)))
    # The last registered is called first: register backwards, so that the plugins are
    # called in the order given (as with ``[plugins] enabled``).
    for name, plugin in reversed(list((plugins or {}).items())):
        daemon.plugins.register(plugin, name)
    await daemon.start()
    host, port = daemon.server.address
    running = InProcessDaemon(daemon, host, port, daemon.tls.fingerprint, state_dir=tmp_path)
    try:
        yield running
    finally:
        for client in running.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 3)
        await daemon.stop()


def guest() -> dict[str, str]:
    """Fresh guest credentials."""
    return {"guest_key": base64.b64encode(os.urandom(32)).decode()}


async def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds; fails the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {condition}")
        await asyncio.sleep(0.01)


async def refused(call: Any) -> RequestError:
    """Await a request that must fail; returns the error."""
    try:
        result = await call
    except RequestError as exc:
        return exc
    raise AssertionError(f"request succeeded: {result}")


@dataclass
class Call:
    hook: str
    args: dict[str, Any]


@dataclass
class Recorder:
    """Records every observer hook call; ``wait`` for one that matches."""

    calls: list[Call] = field(default_factory=list)

    def _record(self, hook: str, **args: Any) -> None:
        self.calls.append(Call(hook, args))

    def of(self, hook: str) -> list[dict[str, Any]]:
        return [call.args for call in self.calls if call.hook == hook]

    async def wait(
        self, hook: str, where: Callable[[dict[str, Any]], bool] = lambda a: True
    ) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [a for a in self.of(hook) if where(a)]
            return bool(found)

        await wait_until(seen)
        return found[0]

    @hookimpl
    def startup(self, api: Any) -> None:
        self._record("startup", api=api)

    @hookimpl
    def shutdown(self, api: Any) -> None:
        self._record("shutdown", api=api)

    @hookimpl
    def room_created(self, room: str, owner: str) -> None:
        self._record("room_created", room=room, owner=owner)

    @hookimpl
    def room_closed(self, room: str, reason: str) -> None:
        self._record("room_closed", room=room, reason=reason)

    @hookimpl
    def participant_joined(self, room: str, user: str, session: int, role: str) -> None:
        self._record("participant_joined", room=room, user=user, session=session, role=role)

    @hookimpl
    def participant_left(self, room: str, user: str, session: int, reason: str) -> None:
        self._record("participant_left", room=room, user=user, session=session, reason=reason)

    @hookimpl
    def role_changed(self, room: str, user: str, old: str, new: str) -> None:
        self._record("role_changed", room=room, user=user, old=old, new=new)

    @hookimpl
    def speaking_changed(self, room: str, speakers: list[str]) -> None:
        self._record("speaking_changed", room=room, speakers=speakers)

    @hookimpl
    def moderation_taken(
        self, room: str, actor: str, action: str, target: str | None, detail: dict[str, Any]
    ) -> None:
        self._record(
            "moderation_taken", room=room, actor=actor, action=action, target=target, detail=detail
        )

    @hookimpl
    def knock_received(self, room: str, request: Any) -> None:
        self._record("knock_received", room=room, request=request)


# --------------------------------------------------------------------------- a live stage


def tone_frames() -> Any:
    """An endless 440 Hz tone in 20 ms PCM frames."""
    return itertools.cycle(list(frames(tone([440.0], 1.0))))


@dataclass
class LiveStage:
    """A room ``stage`` with a host, a speaker sending a tone, and a listener receiving it."""

    host: SalonClient
    speaker: SalonClient
    listener: SalonClient
    speaker_audio: RoomAudio
    listener_audio: RoomAudio
    tasks: list[asyncio.Task[Any]]

    @property
    def heard(self) -> int:
        """Datagrams the listener decrypted and accepted so far."""
        return self.listener_audio.receiver.stats.accepted

    async def hears_more(self, packets: int = 25) -> None:
        """Wait until the listener accepted ``packets`` more datagrams of the speaker."""
        start = self.heard
        await wait_until(lambda: self.heard >= start + packets)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def live_stage(running: InProcessDaemon, room: str = "stage") -> LiveStage:
    host = await running.client("Host", credentials=guest())
    await host.create_room("Live stage", room=room)
    await host.join(room)
    invite = (await host.call("create_invite", role="speaker"))["invite"]["token"]
    speaker = await running.client("Speaker", credentials=guest())
    listener = await running.client("Listener", credentials=guest())
    speaker_audio = RoomAudio(speaker, source=tone_frames(), auto_unmute=True)
    listener_audio = RoomAudio(listener)
    await speaker.join(room, invite=invite)
    await listener.join(room)
    tasks = [
        asyncio.ensure_future(speaker_audio.run()),
        asyncio.ensure_future(listener_audio.run()),
    ]
    stage = LiveStage(host, speaker, listener, speaker_audio, listener_audio, tasks)
    await stage.hears_more()
    return stage
