"""Plugins that raise or hang leave salond serving everyone else: audio keeps flowing.

A live room (a speaker sending a tone with RoomAudio, a listener decrypting it) runs while a
third client's requests go through a plugin that raises and one that hangs, and while both
plugins' observers and audio-level subscribers misbehave.
"""

from __future__ import annotations

import asyncio
from typing import Any

from salon.daemon.core import Identity
from salon.daemon.hooks import AudioLevel, SalonAPI, hookimpl
from salon.daemon.wire import messages as msg
from tests.test_plugin_support import guest, live_stage, plugin_daemon, refused, wait_until

TIMEOUT = 1.0
"""plugins.plugin_timeout in these tests."""

TROUBLE = "Troublemaker"


class Boom(Exception):
    pass


class Raising:
    """Raises in every hook it implements (for everyone but the stage's own setup)."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def startup(self, api: SalonAPI) -> None:
        api.subscribe_audio_levels()

    @hookimpl
    def join_request(self, identity: Identity) -> Any:
        if identity.display_name == TROUBLE:
            raise Boom("join_request exploded")
        return None

    @hookimpl
    def authorize(self, identity: Identity, action: str) -> Any:
        if identity.display_name == TROUBLE and action == "raise_hand":
            raise Boom("authorize exploded")
        return None

    @hookimpl
    def role_changed(self) -> None:
        raise Boom("role_changed exploded")

    @hookimpl
    def participant_joined(self) -> None:
        raise Boom("participant_joined exploded")

    @hookimpl
    def audio_levels(self, levels: list[AudioLevel]) -> None:
        self.calls += 1
        raise Boom("audio_levels exploded")


class Hanging:
    """Never answers: awaits forever in every hook it implements."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def startup(self, api: SalonAPI) -> None:
        api.subscribe_audio_levels()

    @hookimpl
    async def authorize(self, identity: Identity, action: str) -> Any:
        if identity.display_name == TROUBLE and action in ("create_room", "update_room"):
            await asyncio.Event().wait()
        return None

    @hookimpl
    async def unmute(self, identity: Identity) -> Any:
        if identity.display_name == TROUBLE:
            await asyncio.Event().wait()
        return None

    @hookimpl
    async def participant_joined(self) -> None:
        await asyncio.Event().wait()

    @hookimpl
    async def audio_levels(self) -> None:
        self.calls += 1
        await asyncio.Event().wait()


async def test_raising_and_hanging_plugins_leave_the_room_serving(tmp_path):
    raising, hanging = Raising(), Hanging()
    async with plugin_daemon(
        tmp_path,
        {"raising": raising, "hanging": hanging},
        **{"plugins.plugin_timeout": TIMEOUT},
    ) as running:
        stats = running.daemon.server.stats
        stage = await live_stage(running)
        try:
            trouble = await running.client(TROUBLE, credentials=guest())
            # join_request raises: the plugin's opinion is dropped, the open room admits.
            assert (await trouble.join("stage"))["status"] == "joined"
            assert stats.plugin_errors["join_request"] == 1
            # authorize raises: its safe default is a refusal, and the room goes on.
            error = await refused(trouble.call("raise_hand"))
            assert (error.code, error.message) == (
                "denied_by_plugin",
                "a plugin check failed; try again",
            )
            assert stats.plugin_errors["authorize"] == 1
            await stage.hears_more()

            # authorize hangs: the request waits for the budget, and the listener keeps
            # receiving the speaker's audio all along.
            heard = stage.heard
            pending = asyncio.ensure_future(trouble.call("update_room", title="Mine now"))
            await stage.hears_more()
            error = await refused(pending)
            assert error.code == "denied_by_plugin"
            assert stats.plugin_errors["authorize"] == 2
            assert stage.heard > heard

            # Observers that raise or hang never get in the way: the joins above and this
            # role change reached them and failed there.
            await stage.host.call("invite_to_speak", user=trouble.user)
            await trouble.wait_for_event(msg.SpeakInvitation, timeout=10)
            await trouble.call("accept_speak")
            await wait_until(lambda: stats.plugin_errors["participant_joined"] >= 2)
            await wait_until(lambda: stats.plugin_errors["role_changed"] >= 1)
            # Audio-level subscribers that raise or hang are sampled off the media path.
            await wait_until(lambda: raising.calls >= 3 and hanging.calls >= 1)
            await wait_until(lambda: stats.plugin_errors["audio_levels"] >= 3)

            # The daemon still serves newcomers: one more listener hears the speaker.
            late = await running.client("Late listener", credentials=guest())
            await late.join("stage")
            before = late.datagrams_received
            await wait_until(lambda: late.datagrams_received >= before + 25)
            await stage.hears_more()
            host_view = await stage.host.call("get_room", room="stage")
            assert host_view["room"]["listeners"] == 2  # the listener and the late one
        finally:
            await stage.stop()
        assert stage.speaker_audio.frames_sent > 0
        assert stats.plugin_errors["unmute"] == 0  # the troublemaker never got there


async def test_a_hanging_unmute_check_times_out_without_muting_the_room(tmp_path):
    hanging = Hanging()
    async with plugin_daemon(
        tmp_path, {"hanging": hanging}, **{"plugins.plugin_timeout": TIMEOUT}
    ) as running:
        stats = running.daemon.server.stats
        stage = await live_stage(running)
        try:
            invite = (await stage.host.call("create_invite", role="speaker"))["invite"]["token"]
            trouble = await running.client(TROUBLE, credentials=guest())
            await trouble.join("stage", invite=invite)
            pending = asyncio.ensure_future(trouble.call("unmute"))
            await stage.hears_more()
            # A moderation check that fails lets the request through (docs: on failure).
            await pending
            assert stats.plugin_errors["unmute"] == 1
            participant = await stage.host.wait_for_event(
                msg.ParticipantUpdated,
                timeout=10,
                where=lambda e: e.participant.user == trouble.user and not e.participant.muted,
            )
            assert participant.participant.role == "speaker"
            await stage.hears_more()
        finally:
            await stage.stop()
