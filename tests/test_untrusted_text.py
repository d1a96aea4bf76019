"""Untrusted text: refused or cleaned where it enters, harmless where it leaves.

The entry rule (``salon.daemon.wire.text``) over real QUIC and the admin socket; the exits
(``salonctl``, ``salon rooms``) as separate processes; lookalike names in ``salonctl approve``.
The console's side is in test_tui.py and test_tui_tmux.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest

from salon.client.connection import RequestError
from salon.daemon.core import CoreError
from salon.daemon.core.room import clean_description, clean_title, clean_topics
from salon.daemon.wire.confusables import confusable, name_warning, skeleton
from salon.daemon.wire.messages import ErrorCode
from salon.daemon.wire.text import TextError, cell_width, check_text, clean_text, printable
from tests.conftest import InProcessDaemon

LINK = "[link=https://evil.example]click[/link]"
TERMINAL_ATTACK = "\x1b[31mRED\x1b[0m\x1b]0;pwned\x07"
CYRILLIC_A = "\u0430"


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    "char", ["\x1b", "\x07", "\x7f", "\x00", "\x9b", "\u202e", "\u202a", "\u2066", "\u2069"]
)
def test_control_and_bidi_characters_are_refused_with_their_code_point(char: str) -> None:
    with pytest.raises(TextError) as caught:
        check_text("title", f"Nice{char}room", max_width=200)
    assert caught.value.bad_characters
    assert f"U+{ord(char):04X}" in str(caught.value)
    with pytest.raises(CoreError) as refused:
        clean_title(f"Nice{char}room")
    assert refused.value.code is ErrorCode.INVALID_TEXT


def test_invisible_characters_are_removed_and_text_normalised() -> None:
    assert check_text("name", "Gr\u200bace\u200d \ufeffHopper", max_width=64) == "Grace Hopper"
    assert check_text("name", "Zoe\u0308", max_width=64) == "Zo\u00eb"  # NFC
    assert check_text("name", "  a \t  b  ", max_width=64) == "a b"
    zalgo = "Z" + "\u0336" * 40
    assert check_text("name", zalgo, max_width=64) == "Z" + "\u0336" * 3
    with pytest.raises(TextError, match="invisible"):
        check_text("name", "\u200b\u2060", max_width=64)
    # Width, not code points: wide characters count two cells.
    assert cell_width("会議") == 4
    with pytest.raises(TextError, match="at most 3"):
        check_text("name", "会議", max_width=3)
    assert clean_description("line one\r\nline  two") == "line one\nline two"  # lines kept...
    with pytest.raises(CoreError):
        clean_description("line\x1b[2J")  # ...but not escapes
    assert clean_topics(["Jazz\u200b"]) == ["jazz"]


def test_clean_text_and_printable_never_let_a_control_character_through() -> None:
    hostile = "Nice room\x1b]0;x\x07\x1b[2J\x1b[H\u202eevil\u200b"
    assert clean_text(hostile) == "Nice room]0;x[2J[Hevil"
    shown = printable(hostile)
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in shown)
    assert "\u202e" not in shown and "\u200b" not in shown
    assert shown.startswith("Nice room\ufffd")
    assert printable("a\nb", multiline=True) == "a\nb"


def test_confusable_skeleton_and_mixed_scripts() -> None:
    lookalike = f"Gr{CYRILLIC_A}ce"
    assert skeleton(lookalike) == skeleton("Grace") == "grace"
    assert confusable("Ada Lovelace", "Ada L0velace")
    assert not confusable("Grace", "Grade")
    warning = name_warning(lookalike)
    assert warning.mixed_scripts and warning.looks_like == "Grace"
    assert warning.describe() == "⚠ mixed scripts · looks like: Grace"
    assert not name_warning("Grace Hopper")
    assert not name_warning("Zoë")
    assert not name_warning("Αλέξανδρος")  # a Greek name is just Greek
    assert name_warning("\u0421\u043e\u0441\u043e").looks_like == "Coco"  # all-Cyrillic "Coco"


# ----------------------------------------------------------------------------- entry, real QUIC


async def test_hostile_text_is_refused_or_cleaned_over_quic(live: InProcessDaemon) -> None:
    with pytest.raises(RequestError) as refused:
        await live.client(TERMINAL_ATTACK)
    assert refused.value.code == "invalid_text" and "U+001B" in refused.value.message
    with pytest.raises(RequestError) as refused:
        await live.client("Grace\u202eHopper")
    assert refused.value.code == "invalid_text"
    owner = await live.client("Gr\u200bace")
    assert owner.display_name == "Grace"
    with pytest.raises(RequestError) as refused:
        await owner.create_room("Nice room\x1b]0;x\x07\x1b[2J\x1b[H", room="nice")
    assert refused.value.code == "invalid_text"
    room = await owner.create_room(LINK, room="nice", topics=["tips"], policy="approval")
    assert room["title"] == LINK  # markup is text: the renderers show it literally
    await owner.join("nice")
    with pytest.raises(RequestError) as refused:
        await owner.call("update_room", topics=["ok", "bad\x07"])
    assert refused.value.code == "invalid_text"
    knocker = await live.client("Knocker")
    await knocker.join("nice")
    knock = (await owner.wait_for_event(_knock_type(), timeout=10)).request
    with pytest.raises(RequestError) as refused:
        await owner.call("deny_knock", request_id=knock.request_id, reason="go\x1b[2J")
    assert refused.value.code == "invalid_text"


def _knock_type() -> Any:
    from salon.daemon.wire import messages as msg

    return msg.Knock


# ----------------------------------------------------------------------------- exits


async def run(*command: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def salonctl(live: InProcessDaemon, *args: str) -> tuple[int, str, str]:
    socket = str(live.daemon.config.admin_socket)
    return await run(sys.executable, "-m", "salon.daemon.admin.ctl", "--socket", socket, *args)


async def salon(live: InProcessDaemon, *args: str) -> tuple[int, str, str]:
    server = f"{live.host}:{live.port}"
    return await run(
        sys.executable,
        "-m",
        "salon.client.cli",
        *args,
        "--server",
        server,
        "--fingerprint",
        live.fingerprint,
    )


def assert_harmless(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text


async def test_stored_hostile_text_reaches_salonctl_and_salon_rooms_harmless(
    live: InProcessDaemon,
) -> None:
    owner = await live.client("Owner")
    await owner.create_room(LINK, room="nice", topics=["[b]bold[/b]"], policy="approval")
    # Text stored before the entry rule existed: planted behind the rule's back.
    live.daemon.core.rooms["nice"].title = f"{LINK}\x1b]0;pwned\x07\x1b[2J\u202eevil"
    code, out, err = await salonctl(live, "room", "nice")
    assert code == 0, err
    assert_harmless(out)
    assert LINK in out and "\ufffd" in out
    code, out, err = await salonctl(live, "rooms")
    assert code == 0, err
    assert_harmless(out)
    code, out, err = await salon(live, "rooms")
    assert code == 0, err
    assert_harmless(out)
    assert "[link=https://evil.example]click" in out and "[b]bold[/b]" in out
    code, out, _ = await salon(live, "rooms", "--json")
    assert json.loads(out)[0]["title"].startswith(LINK)  # JSON escapes, keeps the data


async def test_approve_by_name_refuses_ambiguity_and_lookalikes(live: InProcessDaemon) -> None:
    code, _, err = await salonctl(
        live, "create", "hall", "--title", "Hall", "--policy", "approval", "--persistent"
    )
    assert code == 0, err
    impostor = await live.client(f"Gr{CYRILLIC_A}ce Hopper")
    await impostor.join("hall")
    code, out, _ = await salonctl(live, "room", "hall")
    assert "⚠ mixed scripts · looks like: Grace Hopper" in out
    # The only knock merely looks like the name given: nobody is admitted by name.
    code, out, err = await salonctl(live, "approve", "hall", "Grace Hopper")
    assert code == 1 and "ambiguous_name" in err and impostor.user in err, err
    grace = await live.client("Grace Hopper")
    await grace.join("hall")
    # Now the real name and a lookalike knock: the exact name is ambiguous too.
    code, out, err = await salonctl(live, "--json", "approve", "hall", "Grace Hopper")
    assert code == 1 and json.loads(out)["error"]["code"] == "ambiguous_name"
    assert grace.user in err and impostor.user in err
    # The user id decides.
    code, out, err = await salonctl(live, "--json", "approve", "hall", grace.user)
    assert code == 0, err
    assert json.loads(out)["request_id"]
    code, out, err = await salonctl(live, "--json", "deny", "hall", impostor.user)
    assert code == 0, err
    denied = json.loads(out)
    assert denied["action"] == "deny_knock" and denied["user"] == impostor.user


async def test_member_actions_by_name_meaningful_json_and_nothing_to_do(
    live: InProcessDaemon,
) -> None:
    owner = await live.client("Owner")
    await owner.create_room("Stage", room="stage")
    ada = await live.client("Ada Lovelace")
    await ada.join("stage")
    code, out, err = await salonctl(live, "--json", "invite-to-speak", "stage", "Ada Lovelace")
    assert code == 0, err
    assert json.loads(out) == {
        "action": "invite_to_speak",
        "ok": True,
        "room": "stage",
        "user": ada.user,
    }
    await ada.call("accept_speak")
    for command in ("mute", "unmute"):
        code, out, err = await salonctl(live, "--json", command, "stage", ada.user)
        assert code == 0, err
        result = json.loads(out)
        assert result != {} and (result["action"], result["user"]) == (command, ada.user)
    code, out, err = await salonctl(live, "mute", "stage", "Ada Lovelace")
    assert code == 0 and f"Ada Lovelace ({ada.user})" in out, err
    code, _, err = await salonctl(live, "mute", "stage", "Nobody Here")
    assert code == 1 and "participant_not_found" in err
    # Nothing to do is said, not "done".
    code, out, err = await salonctl(live, "lower-hand", "stage", ada.user)
    assert code == 1 and "no_raised_hand" in err and "done" not in out, (out, err)
    code, out, err = await salonctl(live, "unban", "stage", ada.user)
    assert code == 1 and "not banned" in err and "done" not in out, (out, err)


async def test_watch_into_a_closed_pipe_ends_quietly(live: InProcessDaemon) -> None:
    socket = str(live.daemon.config.admin_socket)
    proc = await asyncio.create_subprocess_shell(
        f"{sys.executable} -m salon.daemon.admin.ctl --socket {socket} --json watch | head -n 1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    owner = await live.client("Owner")
    await owner.create_room("Busy", room="busy")
    # Events until head has its line and has gone: each join or leave is one more line.
    for _ in range(200):
        if proc.returncode is not None:
            break
        await owner.join("busy")
        await owner.leave()
        await asyncio.sleep(0.05)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert len(out.decode().splitlines()) == 1
    assert "Traceback" not in err.decode() and "BrokenPipe" not in err.decode(), err.decode()


def test_restored_text_is_cleaned_and_cut_never_refused() -> None:
    from salon.daemon.core.room import MAX_TITLE, restored_text

    # Stored when lengths counted characters: 150 wide characters are 300 cells.
    assert restored_text("会" * 150, MAX_TITLE) == "会" * 100
    assert restored_text("\x1b\x07\u200b", MAX_TITLE) == ""  # then refused: nothing to show
    assert restored_text("Nice\x1b[2J room", MAX_TITLE) == "Nice[2J room"
