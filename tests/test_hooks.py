"""One ``test_hook_<name>`` per hook, each through a real salond over QUIC.

tests/test_plugin_docs.py fails when a hook of salon.daemon.hooks.hookspecs has no test here.
"""

from __future__ import annotations

from typing import Any

import pytest

from salon.client.connection import RequestError
from salon.daemon.core import Identity
from salon.daemon.hooks import Approve, AudioLevel, Deny, SalonAPI, hookimpl
from salon.daemon.wire import messages as msg
from tests.test_plugin_support import (
    Recorder,
    guest,
    live_stage,
    plugin_daemon,
    refused,
    wait_until,
)

# ---------------------------------------------------------------------------------- auth


async def test_hook_authenticate(tmp_path):
    seen: list[tuple[dict[str, str], str, str]] = []

    class Tickets:
        @hookimpl
        def authenticate(self, credentials: dict[str, str], display_name: str, address: str) -> Any:
            seen.append((credentials, display_name, address))
            ticket = credentials.get("ticket")
            if ticket is None:
                return None  # not ours: the next plugin (builtin_auth) decides
            if ticket == "good":
                return Identity("ticket-holder", display_name, {"ticket": "row 5"})
            if ticket == "huge":  # out of the identity bounds: the daemon refuses it
                return Identity("x" * 129, display_name, {})
            if ticket == "chatty":
                return Identity("chatty", display_name, {str(i): "v" for i in range(9)})
            return Deny("this ticket was cancelled")

    async with plugin_daemon(tmp_path, {"tickets": Tickets()}) as running:
        holder = await running.client("  Holder  ", credentials={"ticket": "good"})
        assert (holder.user, holder.display_name) == ("ticket-holder", "Holder")
        with pytest.raises(RequestError) as caught:
            await running.client("Eve", credentials={"ticket": "forged"})
        assert (caught.value.code, caught.value.message) == (
            "auth_failed",
            "this ticket was cancelled",
        )
        for ticket in ("huge", "chatty"):
            with pytest.raises(RequestError) as caught:
                await running.client("Eve", credentials={"ticket": ticket})
            assert caught.value.code == "auth_failed"
        # No answer from this plugin: the built-in guest authentication still works.
        visitor = await running.client("Guest", credentials=guest())
        assert visitor.user.startswith("guest-")
    assert seen[0] == ({"ticket": "good"}, "  Holder  ", "127.0.0.1")


async def test_hook_authorize(tmp_path):
    asked: list[tuple[str, str, str | None, str | None]] = []

    class NoRoomsForBob:
        @hookimpl
        def authorize(
            self, identity: Identity, action: str, room: str | None, target: str | None
        ) -> Any:
            asked.append((identity.display_name, action, room, target))
            if identity.display_name == "Bob" and action == "create_room":
                return Deny("Bob may not open rooms")
            if action == "remove":
                return False  # a bare refusal
            return True if action == "join" else None

    async with plugin_daemon(tmp_path, {"rules": NoRoomsForBob()}) as running:
        bob = await running.client("Bob")
        error = await refused(bob.create_room("Bob's", room="bobs"))
        assert (error.code, error.message) == ("denied_by_plugin", "Bob may not open rooms")
        ada = await running.client("Ada")
        await ada.create_room("Ada's", room="adas")
        await ada.join("adas")
        await bob.join("adas")
        error = await refused(ada.call("remove", user=bob.user))
        assert (error.code, error.message) == ("denied_by_plugin", "refused by rules")
        await bob.leave()  # leaving is never asked about
    assert ("Bob", "create_room", "bobs", None) in asked
    assert ("Bob", "join", "adas", None) in asked
    assert ("Ada", "remove", "adas", bob.user) in asked
    assert not [a for a in asked if a[1] in ("leave", "cancel_knock")]


# ---------------------------------------------------------------------------------- moderation


async def test_hook_join_request(tmp_path):
    asked: list[tuple[str, str, str, str | None, bool]] = []

    class Doorman:
        @hookimpl
        def join_request(
            self, identity: Identity, room: str, address: str, invite: str | None, knock: bool
        ) -> Any:
            asked.append((identity.display_name, room, address, invite, knock))
            if identity.display_name == "Mallory":
                return Deny("not tonight")
            if identity.display_name == "Friend":
                return Approve(("friend of the house",))
            return ["met at the door", "first visit"] if knock else None

    recorder = Recorder()
    async with plugin_daemon(tmp_path, {"doorman": Doorman(), "recorder": recorder}) as running:
        host = await running.client("Host")
        await host.create_room("Members only", room="club", policy="approval")
        await host.join("club")
        # A plugin denies a knock: the requester gets denied_by_plugin, the hosts see nothing.
        mallory = await running.client("Mallory")
        error = await refused(mallory.join("club"))
        assert (error.code, error.message) == ("denied_by_plugin", "not tonight")
        # Annotations reach the hosts with the knock.
        bob = await running.client("Bob")
        assert (await bob.join("club"))["status"] == "knocking"
        knock = await host.wait_for_event(msg.Knock, timeout=10)
        assert knock.request.user == bob.user
        assert knock.request.trust == ["met at the door", "first visit"]
        # Approve: admitted without knocking, and audited.
        friend = await running.client("Friend")
        assert (await friend.join("club"))["status"] == "joined"
        audit = await recorder.wait("moderation_taken", lambda a: a["action"] == "auto_approve")
        assert audit["actor"] == "plugin:doorman" and audit["target"] == friend.user
        assert audit["detail"] == {"trust": ["friend of the house"]}
    assert ("Host", "club", "127.0.0.1", None, False) in asked
    assert ("Bob", "club", "127.0.0.1", None, True) in asked


async def test_hook_raise_hand(tmp_path):
    class NoHandsFromQuiet:
        @hookimpl
        def raise_hand(self, identity: Identity, room: str) -> Deny | None:
            if identity.display_name.startswith("Quiet"):
                return Deny(f"{identity.display_name} listens only in {room}")
            return None

    async with plugin_daemon(tmp_path, {"quiet": NoHandsFromQuiet()}) as running:
        host = await running.client("Host")
        await host.create_room("Talk", room="talk")
        await host.join("talk")
        quiet = await running.client("Quiet Q")
        await quiet.join("talk")
        error = await refused(quiet.call("raise_hand"))
        assert (error.code, error.message) == ("denied_by_plugin", "Quiet Q listens only in talk")
        loud = await running.client("Loud")
        await loud.join("talk")
        await loud.call("raise_hand")
        queue = await host.wait_for_event(msg.HandQueue, timeout=10)
        assert queue.users == [loud.user]


async def test_hook_unmute(tmp_path):
    asked: list[tuple[str, str, str]] = []

    class Library:
        @hookimpl
        def unmute(self, identity: Identity, room: str, target: str) -> Deny | None:
            asked.append((identity.display_name, room, target))
            return Deny("silence in the library") if room == "library" else None

    async with plugin_daemon(tmp_path, {"library": Library()}) as running:
        host = await running.client("Host")
        await host.create_room("Library", room="library")
        await host.join("library")
        error = await refused(host.call("unmute"))
        assert (error.code, error.message) == ("denied_by_plugin", "silence in the library")
        await host.leave()
        await host.create_room("Cafe", room="cafe")
        await host.join("cafe")
        await host.call("unmute")
    assert asked == [("Host", "library", host.user), ("Host", "cafe", host.user)]


async def test_hook_promotion(tmp_path):
    asked: list[tuple[str, str, str]] = []

    class NoNewModerators:
        @hookimpl
        def promotion(self, identity: Identity, room: str, target: str, role: str) -> Any:
            asked.append((identity.display_name, target, role))
            return Deny("this room keeps its moderators") if role == "moderator" else None

    async with plugin_daemon(tmp_path, {"stage": NoNewModerators()}) as running:
        host = await running.client("Host")
        await host.create_room("Talk", room="talk")
        await host.join("talk")
        guest_client = await running.client("Ann")
        await guest_client.join("talk")
        await host.call("invite_to_speak", user=guest_client.user)
        await guest_client.wait_for_event(msg.SpeakInvitation, timeout=10)
        await guest_client.call("accept_speak")
        error = await refused(host.call("promote", user=guest_client.user))
        assert (error.code, error.message) == ("denied_by_plugin", "this room keeps its moderators")
    ann = guest_client.user
    assert asked == [
        ("Host", ann, "speaker"),
        ("Ann", ann, "speaker"),
        ("Host", ann, "moderator"),
    ]


async def test_hook_room_text(tmp_path):
    asked: list[tuple[str | None, str, str]] = []

    class Editor:
        @hookimpl
        def room_text(self, room: str | None, field: str, text: str) -> str | Deny | None:
            asked.append((room, field, text))
            if field == "description" and "http" in text:
                return Deny("no links in descriptions")
            return text.replace("colour", "color") if "colour" in text else None

    async with plugin_daemon(tmp_path, {"editor": Editor()}) as running:
        host = await running.client("Host")
        created = await host.create_room("The colour of jazz", room="jazz")
        assert created["title"] == "The color of jazz"
        await host.join("jazz")
        error = await refused(host.call("update_room", description="see http://spam"))
        assert (error.code, error.message) == ("denied_by_plugin", "no links in descriptions")
        await host.call("update_room", title="colour field", description="Modal jazz")
        updated = (await host.call("get_room", room="jazz"))["room"]
        assert (updated["title"], updated["description"]) == ("color field", "Modal jazz")
    assert asked[0] == ("jazz", "title", "The colour of jazz")
    assert ("jazz", "description", "Modal jazz") in asked


async def test_hook_audio_levels(tmp_path):
    class Meter:
        def __init__(self) -> None:
            self.samples: list[tuple[str, list[AudioLevel]]] = []

        @hookimpl
        def startup(self, api: SalonAPI) -> None:
            api.subscribe_audio_levels()  # every live room

        @hookimpl
        def audio_levels(self, room: str, levels: list[AudioLevel]) -> None:
            self.samples.append((room, levels))

    class NotSubscribed:
        def __init__(self) -> None:
            self.samples: list[Any] = []

        @hookimpl
        def audio_levels(self, room: str, levels: list[AudioLevel]) -> None:
            self.samples.append(room)

    meter, bystander = Meter(), NotSubscribed()
    async with plugin_daemon(tmp_path, {"meter": meter, "bystander": bystander}) as running:
        stage = await live_stage(running)
        try:
            speaker = stage.speaker.user

            def loud() -> bool:
                # The level is smoothed from silence (127): wait for it to settle on the tone.
                return any(
                    room == "stage"
                    and any(x.user == speaker and x.speaking and x.level <= 50 for x in levels)
                    for room, levels in meter.samples
                )

            await wait_until(loud)
        finally:
            await stage.stop()
    rooms = {room for room, _ in meter.samples}
    assert rooms == {"stage"}
    assert all(0 <= x.level <= 127 for _, xs in meter.samples for x in xs)
    assert bystander.samples == []


# ---------------------------------------------------------------------------------- topics


async def test_hook_normalize_topics(tmp_path):
    class Librarian:
        @hookimpl
        def normalize_topics(self, topics: list[str]) -> list[str] | Deny:
            if "forbidden" in topics:
                return Deny("that topic is not for here")
            return ["science fiction" if t.lower() == "sci-fi" else t for t in topics]

    async with plugin_daemon(tmp_path, {"librarian": Librarian()}) as running:
        host = await running.client("Host")
        created = await host.create_room("Readers", room="readers", topics=["Sci-Fi", "books"])
        assert created["topics"] == ["science fiction", "books"]
        error = await refused(host.create_room("Other", topics=["forbidden"]))
        assert error.code == "denied_by_plugin"
        # The topic a client lists rooms by is normalised the same way.
        assert [r["room"] for r in await host.list_rooms("sci-fi")] == ["readers"]


async def test_hook_known_topics(tmp_path):
    class Music:
        @hookimpl
        def known_topics(self) -> list[str]:
            return ["jazz", "blues"]

    class Books:
        @hookimpl
        async def known_topics(self) -> list[str]:
            return ["books", "jazz"]

    async with plugin_daemon(tmp_path, {"music": Music(), "books": Books()}) as running:
        client = await running.client("Reader")
        result = await client.call("list_rooms")
        assert result == {"rooms": [], "topics": ["jazz", "blues", "books"]}


async def test_hook_rank_rooms(tmp_path):
    class Curator:
        @hookimpl
        def rank_rooms(self, identity: Identity, rooms: list[msg.RoomSummary]) -> Any:
            visible = [r for r in rooms if r.title != "Hidden"]
            invented = msg.RoomSummary(room="ghost", title="Not a real room")
            featured = [r for r in visible if r.title.startswith("Featured")]
            return [invented, *featured, *(r for r in visible if r not in featured)]

    async with plugin_daemon(tmp_path, {"curator": Curator()}) as running:
        busy = await running.client("Busy")
        await busy.create_room("Busy room", room="busy")
        await busy.join("busy")
        for name in ("Featured talk", "Hidden"):
            owner = await running.client(name)
            await owner.create_room(name)
        second = await running.client("Listener")
        await second.join("busy")
        titles = [r["title"] for r in await busy.list_rooms()]
        assert titles == ["Featured talk", "Busy room"]


# ---------------------------------------------------------------------------------- observers


async def test_hook_startup(tmp_path):
    recorder = Recorder()
    async with plugin_daemon(tmp_path, {"recorder": recorder}):
        (call,) = recorder.of("startup")
        assert isinstance(call["api"], SalonAPI) and call["api"].name == "recorder"
        assert recorder.of("shutdown") == []


async def test_hook_shutdown(tmp_path):
    recorder = Recorder()
    async with plugin_daemon(tmp_path, {"recorder": recorder}) as running:
        client = await running.client("Ada")
        await client.create_room("Ada's", room="adas")
        await client.join("adas")
    # Events of the shutdown itself (members disconnected) were delivered before it.
    assert [c.hook for c in recorder.calls][-1] == "shutdown"
    assert recorder.of("participant_left")[0]["reason"] == "disconnected"


async def test_hook_room_created(tmp_path):
    recorder = Recorder()
    async with plugin_daemon(tmp_path, {"recorder": recorder}) as running:
        client = await running.client("Ada")
        await client.create_room("Ada's", room="adas")
        assert await recorder.wait("room_created") == {"room": "adas", "owner": client.user}


async def test_hook_room_closed(tmp_path):
    recorder = Recorder()
    async with plugin_daemon(tmp_path, {"recorder": recorder}) as running:
        client = await running.client("Ada")
        await client.create_room("Ada's", room="adas")
        await client.join("adas")
        await client.call("close_room")
        assert await recorder.wait("room_closed") == {"room": "adas", "reason": "closed_by_host"}


async def test_hook_participant_joined(tmp_path):
    recorder = Recorder()
    async with plugin_daemon(tmp_path, {"recorder": recorder}) as running:
        client = await running.client("Ada")
        await client.create_room("Ada's", room="adas")
        await client.join("adas")
        joined = await recorder.wait("participant_joined")
        assert joined == {
            "room": "adas",
            "user": client.user,
            "session": client.session,
            "role": "owner",
        }


async def test_hook_participant_left(tmp_path):
    recorder = Recorder()
    async with plugin_daemon(tmp_path, {"recorder": recorder}) as running:
        host = await running.client("Host")
        await host.create_room("Talk", room="talk")
        await host.join("talk")
        ann = await running.client("Ann")
        await ann.join("talk")
        await ann.leave()
        left = await recorder.wait("participant_left")
        assert left == {"room": "talk", "user": ann.user, "session": ann.session, "reason": "left"}


async def test_hook_role_changed(tmp_path):
    recorder = Recorder()
    async with plugin_daemon(tmp_path, {"recorder": recorder}) as running:
        host = await running.client("Host")
        await host.create_room("Talk", room="talk")
        await host.join("talk")
        ann = await running.client("Ann")
        await ann.join("talk")
        await host.call("invite_to_speak", user=ann.user)
        await ann.wait_for_event(msg.SpeakInvitation, timeout=10)
        await ann.call("accept_speak")
        changed = await recorder.wait("role_changed")
        assert changed == {"room": "talk", "user": ann.user, "old": "listener", "new": "speaker"}


async def test_hook_speaking_changed(tmp_path):
    recorder = Recorder()
    async with plugin_daemon(tmp_path, {"recorder": recorder}) as running:
        stage = await live_stage(running)
        try:
            speaking = await recorder.wait("speaking_changed", lambda a: a["speakers"])
        finally:
            await stage.stop()
        assert speaking == {"room": "stage", "speakers": [stage.speaker.user]}


async def test_hook_moderation_taken(tmp_path):
    class Enforcer:
        """Acts through its SalonAPI: the same operator path, audited as plugin:enforcer."""

        def __init__(self) -> None:
            self.api: SalonAPI | None = None

        @hookimpl
        def startup(self, api: SalonAPI) -> None:
            self.api = api

    recorder, enforcer = Recorder(), Enforcer()
    plugins = {"recorder": recorder, "enforcer": enforcer}
    async with plugin_daemon(tmp_path, plugins) as running:
        host = await running.client("Host")
        await host.create_room("Talk", room="talk")
        await host.join("talk")
        ann = await running.client("Ann")
        await ann.join("talk")
        await host.call("invite_to_speak", user=ann.user)
        taken = await recorder.wait("moderation_taken")
        assert taken == {
            "room": "talk",
            "actor": host.user,
            "action": "invite_to_speak",
            "target": ann.user,
            "detail": {},
        }
        await ann.call("accept_speak")
        assert enforcer.api is not None
        await enforcer.api.mute("talk", ann.user)
        muted = await ann.wait_for_event(msg.Muted, timeout=10)
        assert muted.by == "plugin:enforcer"
        taken = await recorder.wait("moderation_taken", lambda a: a["action"] == "mute")
        assert (taken["actor"], taken["target"]) == ("plugin:enforcer", ann.user)


async def test_hook_knock_received(tmp_path):
    recorder = Recorder()
    async with plugin_daemon(tmp_path, {"recorder": recorder}) as running:
        host = await running.client("Host")
        await host.create_room("Club", room="club", policy="approval")
        await host.join("club")
        bob = await running.client("Bob")
        knocking = await bob.join("club")
        knock = await recorder.wait("knock_received")
        assert knock["room"] == "club"
        assert knock["request"].user == bob.user
        assert knock["request"].request_id == knocking["request_id"]
