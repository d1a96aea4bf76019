"""A room with more members than room_state lists, over real QUIC: joinable, paged, quiet.

The bounds are lowered through the configuration so that a dozen clients make a "big" room.
"""

from __future__ import annotations

import json
from pathlib import Path

from salon.daemon.wire import messages as msg
from tests.conftest import run_daemon
from tests.test_client_messages import salon
from tests.test_salonctl import salonctl

LISTED = 3
QUIET_ABOVE = 4
LISTENERS = 9


async def test_a_room_bigger_than_room_state_is_joinable_and_paged(tmp_path: Path) -> None:
    async with run_daemon(
        tmp_path / "state",
        **{
            "limits.snapshot_listeners": LISTED,
            "limits.audience_events_above": QUIET_ABOVE,
            "limits.counts_interval": 0.2,
        },
    ) as live:
        owner = await live.client("Owner")
        await owner.create_room("Big", room="big")
        await owner.join("big")
        listeners = []
        for i in range(LISTENERS):
            client = await live.client(f"Listener {i}")
            await client.join("big")
            listeners.append(client)
        last = listeners[-1]
        state = await last.wait_for_event(msg.RoomState, timeout=10)
        users = [p.user for p in state.room.participants]
        assert users[0] == owner.user and last.user in users
        assert len(users) == 1 + 1 + LISTED
        assert state.room.partial is True
        assert state.room.summary.listeners == LISTENERS
        # Paging lists every member exactly once.
        members = await last.all_participants(page=4)
        listed = [p["user"] for p in members]
        assert sorted(listed) == sorted([owner.user, *(c.user for c in listeners)])
        assert len(set(listed)) == len(listed)
        page = await last.list_participants(limit=2)
        assert page["total"] == LISTENERS + 1 and page["next"] == page["participants"][1]["user"]
        # The owner saw the first listeners enter one by one, then only counts.
        seen = owner.drain_events()
        while not any(
            isinstance(e, msg.RoomUpdated) and e.room.listeners == LISTENERS for e in seen
        ):
            seen.append(await owner.next_event(10))
        joined = [e.participant.user for e in seen if isinstance(e, msg.ParticipantJoined)]
        assert joined == [c.user for c in listeners[:QUIET_ABOVE]]
        # A listener leaving a big audience is not announced either: only the counts change.
        await listeners[0].leave()
        after: list[object] = []
        while not any(isinstance(e, msg.RoomUpdated) for e in after):
            after.append(await owner.next_event(10))
        assert not [e for e in after if isinstance(e, msg.ParticipantLeft)]
        assert [e.room.listeners for e in after if isinstance(e, msg.RoomUpdated)] == [
            LISTENERS - 1
        ]
        # The operator: the room detail says it is partial; members pages through everyone.
        code, out, err = await salonctl(live, "room", "big")
        assert code == 0, err
        assert f"audience ({LISTED} of {LISTENERS - 1} listed" in out
        code, out, err = await salonctl(live, "members", "big")
        assert code == 0, err
        assert len(out.splitlines()) == LISTENERS
        last_line = next(line for line in out.splitlines() if last.user in line)
        assert last_line.split()[:2] == ["listener", last.user]
        # A member the detail does not list is still found by name for an action.
        code, out, err = await salonctl(live, "invite-to-speak", "big", "Listener 8")
        assert code == 0, err
        await last.wait_for_event(msg.SpeakInvitation, timeout=10)
        # The reference CLI lists every member too (it enters, pages, leaves).
        code, out = await salon(
            "members", "big", "--server", f"{live.host}:{live.port}",
            "--fingerprint", live.fingerprint, "--json",
        )  # fmt: skip
        assert code == 0, out
        users = [m["user"] for m in json.loads(out)]
        assert len(users) == len(set(users)) == LISTENERS + 1  # the CLI itself is one of them
        assert {owner.user, last.user} <= set(users)


async def test_an_event_too_large_to_send_is_dropped_and_counted_not_raised(live) -> None:
    client = await live.client("Ada")
    server = live.daemon.server
    huge = msg.HandQueue(room="r", users=["x" * 1000] * 100)
    server.deliver((client.session,), huge)  # would raise WireError and stop the event pump
    server.deliver((client.session,), msg.RoomClosed(room="r", reason="test"))
    assert server.stats.drops["oversized_event"] == 1
    closed = await client.wait_for_event(msg.RoomClosed, timeout=10)
    assert closed.reason == "test"
