"""floor_control over QUIC: hand-queue auto-advance, unanswered invitations, timed turns, one
speaker at a time. Every action is audited as the plugin's own."""

from __future__ import annotations

from typing import Any

from salon.daemon.wire import messages as msg
from tests.test_plugin_support import Recorder, plugin_daemon, refused, wait_until

WAIT = 10.0


def settings(**values: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "plugins.enabled": "floor_control",
        "plugins.floor_control.tick": "0.05",
    }
    overrides.update({f"plugins.floor_control.{key}": value for key, value in values.items()})
    return overrides


def room_of(running: Any, room: str) -> msg.RoomSnapshot:
    snapshot: msg.RoomSnapshot = running.daemon.server.core.room_snapshot(room)
    return snapshot


def role_of(snapshot: msg.RoomSnapshot, user: str) -> str:
    return next(p.role for p in snapshot.participants if p.user == user)


async def test_a_raised_hand_is_invited_and_an_unanswered_one_gives_way(tmp_path):
    recorder = Recorder()
    overrides = settings(invite_timeout="0.3")
    async with plugin_daemon(tmp_path, {"recorder": recorder}, **overrides) as running:
        host = await running.client("Host")
        await host.create_room("Talk", room="talk")
        await host.join("talk")
        silent = await running.client("Silent")
        eager = await running.client("Eager")
        for listener in (silent, eager):
            await listener.join("talk")
        await silent.call("raise_hand")
        await eager.call("raise_hand")
        # No host acted: the plugin invited the first hand of the queue.
        await silent.wait_for_event(msg.SpeakInvitation, timeout=WAIT)
        audit = await recorder.wait("moderation_taken", lambda a: a["action"] == "invite_to_speak")
        assert (audit["actor"], audit["target"]) == ("plugin:floor_control", silent.user)
        # Silent never answers: their hand is lowered and the next hand is invited.
        await eager.wait_for_event(msg.SpeakInvitation, timeout=WAIT)
        lowered = await recorder.wait("moderation_taken", lambda a: a["action"] == "lower_hand")
        assert lowered["target"] == silent.user
        await eager.call("accept_speak")
        await wait_until(lambda: role_of(room_of(running, "talk"), eager.user) == "speaker")
        assert room_of(running, "talk").hand_queue == []


async def test_timed_turns_return_speakers_to_the_audience(tmp_path):
    async with plugin_daemon(tmp_path, **settings(turn_seconds="0.3")) as running:
        host = await running.client("Host")
        await host.create_room("Timed", room="timed")
        await host.join("timed")
        guest = await running.client("Guest")
        await guest.join("timed")
        await guest.call("raise_hand")
        await guest.wait_for_event(msg.SpeakInvitation, timeout=WAIT)
        await guest.call("accept_speak")
        await guest.wait_for_event(
            msg.ParticipantUpdated,
            timeout=WAIT,
            where=lambda e: e.participant.user == guest.user and e.participant.role == "speaker",
        )
        # The turn ends: back to the audience, while the host (the owner) stays on stage.
        await guest.wait_for_event(
            msg.ParticipantUpdated,
            timeout=WAIT,
            where=lambda e: e.participant.user == guest.user and e.participant.role == "listener",
        )
        assert role_of(room_of(running, "timed"), host.user) == "owner"


async def test_one_speaker_at_a_time(tmp_path):
    overrides = settings(one_speaker="true", auto_advance="false")
    async with plugin_daemon(tmp_path, **overrides) as running:
        host = await running.client("Host")
        await host.create_room("Duet", room="duet")
        await host.join("duet")
        first = await running.client("First")
        second = await running.client("Second")
        for listener in (first, second):
            await listener.join("duet")
        await host.call("invite_to_speak", user=first.user)
        await first.wait_for_event(msg.SpeakInvitation, timeout=WAIT)
        await first.call("accept_speak")
        error = await refused(host.call("invite_to_speak", user=second.user))
        assert (error.code, error.message) == (
            "denied_by_plugin",
            f"one speaker at a time: {first.user} has the floor",
        )
        # Once the floor is free, the next speaker may come up.
        await host.call("move_to_audience", user=first.user)
        await host.call("invite_to_speak", user=second.user)
        await second.wait_for_event(msg.SpeakInvitation, timeout=WAIT)
        await second.call("accept_speak")

        await wait_until(lambda: role_of(room_of(running, "duet"), second.user) == "speaker")
        assert role_of(room_of(running, "duet"), first.user) == "listener"
