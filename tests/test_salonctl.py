"""``salonctl`` as a script uses it: a separate process against a running salond."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

from salon.daemon.wire import messages as msg
from tests.conftest import InProcessDaemon

ADMIN_DOC = Path(__file__).resolve().parent.parent / "docs" / "admin.md"


def documented_room_keys() -> set[str]:
    """The keys of each room in ``salonctl --json rooms``, from the table in docs/admin.md."""
    section = ADMIN_DOC.read_text(encoding="utf-8").split("### `salonctl --json rooms`", 1)[1]
    section = section.split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, re.M))


async def salonctl(live: InProcessDaemon, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "salon.daemon.admin.ctl",
        "--socket",
        str(live.daemon.config.admin_socket),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_json_rooms_is_stable_and_documented(live: InProcessDaemon) -> None:
    code, out, _ = await salonctl(live, "--json", "rooms")
    assert (code, out) == (0, "[]\n")
    code, out, err = await salonctl(
        live,
        "create",
        "book-club",
        "--title",
        "Book club",
        "--policy",
        "approval",
        "--topic",
        "Books",
        "--persistent",
    )
    assert code == 0, err
    assert out == "created book-club: Book club (approval, live)\n"
    guest = await live.client("Reader")
    await guest.join("book-club")  # knocks
    code, out, _ = await salonctl(live, "--json", "rooms")
    rooms = json.loads(out)
    assert set(rooms[0]) == documented_room_keys()
    assert rooms[0]["room"] == "book-club"
    assert rooms[0]["topics"] == ["books"]
    assert (rooms[0]["speakers"], rooms[0]["listeners"]) == (0, 0)
    assert out == json.dumps(rooms, indent=2, sort_keys=True) + "\n"
    assert (await salonctl(live, "rooms", "--json"))[1] == out  # the option after the command
    code, out, _ = await salonctl(live, "rooms")
    assert out.split()[:3] == ["book-club", "Book", "club"]


async def test_knock_approval_and_moderation_from_the_shell(live: InProcessDaemon) -> None:
    await salonctl(
        live, "create", "hall", "--title", "Hall", "--policy", "approval", "--persistent"
    )
    guest = await live.client("Ada Lovelace")
    await guest.join("hall")
    code, out, err = await salonctl(live, "room", "hall")
    assert code == 0, err
    assert "Ada Lovelace" in out and "nothing verified" in out
    code, out, err = await salonctl(live, "approve", "hall", "Ada Lovelace")
    assert code == 0, err
    assert out == f"admitted Ada Lovelace ({guest.user}) to hall\n"
    await guest.wait_for_event(msg.RoomState)
    code, out, err = await salonctl(live, "--json", "invite-to-speak", "hall", guest.user)
    assert (code, json.loads(out)) == (
        0,
        {"action": "invite_to_speak", "ok": True, "room": "hall", "user": guest.user},
    )
    await guest.wait_for_event(msg.SpeakInvitation)
    code, out, err = await salonctl(live, "--json", "mute", "hall", guest.user)
    assert code == 1  # a listener has no microphone to mute
    assert json.loads(out)["error"]["code"] == "not_on_stage"
    assert "not_on_stage" in err
    code, _, err = await salonctl(live, "ban", "hall", guest.user, "--reason", "spam")
    assert code == 0, err
    removed = await guest.wait_for_event(msg.Removed)
    assert removed.banned
    code, out, _ = await salonctl(live, "--json", "audit", "--room", "hall")
    actions = [entry["action"] for entry in json.loads(out)]
    assert actions[:3] == ["ban", "invite_to_speak", "approve_knock"]
    code, out, _ = await salonctl(live, "--json", "status")
    status = json.loads(out)
    assert status["rooms"] == 1 and status["connections"] == 1
    assert {"packets_in", "packets_out", "bytes_in", "bytes_out"} <= set(status["traffic"])


async def test_room_settings_and_invites(live: InProcessDaemon) -> None:
    await salonctl(live, "create", "deck", "--title", "Deck", "--persistent")
    code, out, err = await salonctl(
        live, "set", "deck", "--title", "Upper deck", "--topic", "jazz", "--policy", "invite"
    )
    assert code == 0, err
    assert "Upper deck" in out and "invite" in out
    code, token, err = await salonctl(live, "invite", "deck", "--role", "speaker")
    assert code == 0, err
    speaker = await live.client("Spk")
    assert (await speaker.join("deck", invite=token.strip()))["role"] == "speaker"
    code, out, _ = await salonctl(live, "--json", "invites", "deck")
    assert [i["token"] for i in json.loads(out)] == [token.strip()]
    code, _, _ = await salonctl(live, "close", "deck")
    assert code == 0
    await speaker.wait_for_event(msg.RoomClosed)


async def test_unreachable_socket_and_usage(tmp_path: Path, live: InProcessDaemon) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "salon.daemon.admin.ctl",
        "--socket",
        str(tmp_path / "none.sock"),
        "rooms",
        stderr=asyncio.subprocess.PIPE,
    )
    _, raw_err = await proc.communicate()
    assert proc.returncode == 3
    assert b"cannot connect to the admin socket" in raw_err
    code, _, err = await salonctl(live, "set", "nowhere")
    assert code != 0 and "nothing to change" in err


def test_every_admin_action_has_a_salonctl_command() -> None:
    """Each action of the admin client is reachable from the shell."""
    import inspect

    from salon.daemon.admin import ctl
    from salon.daemon.admin.client import AdminClient

    plumbing = {"connect", "close", "wait_closed", "request", "events", "act"}
    methods = {
        name
        for name, member in vars(AdminClient).items()
        if inspect.iscoroutinefunction(member) and not name.startswith("_")
    } - plumbing
    used = set(re.findall(r"client\.(\w+)\(", inspect.getsource(ctl)))
    used |= {method for method, _ in ctl.USER_ACTIONS.values()}
    if "rooms_raw" in used:
        used.add("rooms")  # the same request, left unconverted for --json
    assert methods - used == set()


def test_every_salonctl_command_is_documented() -> None:
    from salon.daemon.admin.ctl import build_parser

    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    text = ADMIN_DOC.read_text(encoding="utf-8")
    assert isinstance(commands.choices, dict)
    missing = [name for name in commands.choices if f"`{name}" not in text]
    assert missing == [], f"document these salonctl commands in docs/admin.md: {missing}"
