"""Persistence: the store, fed only by the core's events, always holds what the core would restore.

Random sequences of requests, operator actions, disconnections and time drive a core; every
event goes through :class:`Persistence` into a :class:`MemoryStore`. After each sequence the
store must hold exactly the records of the core's open rooms and its server bans, and a fresh
core restored from the store must hold the same. A change the core makes without an event (or
an event Persistence mishandles) fails here.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any

import pytest

from salon.daemon.core import Ban, CoreError, Limits, RoomRecord, RoomSettings
from salon.daemon.store import AuditEntry, MemoryStore, Persistence
from salon.daemon.wire import messages as m
from tests.test_core_support import Harness

USERS = ("u0", "u1", "u2", "u3", "u4")
ROOMS = ("r1", "r2", "r3")


def plain(record: RoomRecord) -> dict[str, Any]:
    data = asdict(record)
    data["invites"] = sorted(data["invites"], key=lambda invite: invite["token"])
    data["bans"] = dict(sorted(data["bans"].items()))
    return data


def plain_bans(bans: dict[str, Ban]) -> dict[str, Any]:
    return {user: asdict(ban) for user, ban in sorted(bans.items())}


class Driver:
    """A core under random load, its events persisted into a MemoryStore."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.h = Harness(Limits(knock_ttl=4, owner_grace=3, reminder_lead=5), seed=seed)
        self.store = MemoryStore()
        self.persistence = Persistence(self.store, clock=lambda: self.h.now)
        self.sessions = {user: self.h.connect(user) for user in USERS}
        self.tokens: list[str] = []

    def pump(self) -> None:
        for event in self.h.drain():
            self.persistence.observe(event)

    def attempt(self, call: Any) -> None:
        try:
            result = call()
        except CoreError:
            pass
        else:
            invite = result.get("invite") if isinstance(result, dict) else None
            if invite:
                self.tokens.append(invite["token"])
        self.pump()

    # Relative weights of the actions of a step.
    ACTIONS = {
        "create": 3,
        "start": 1,
        "subscribe": 1,
        "unsubscribe": 1,
        "join": 8,
        "leave": 2,
        "reconnect": 1,
        "ban": 1,
        "unban": 1,
        "promote": 2,
        "demote": 1,
        "transfer": 1,
        "update": 1,
        "close": 0.3,
        "invite": 2,
        "revoke": 1,
        "knock": 4,
        "remove": 1,
        "server_ban": 0.3,
        "server_unban": 0.6,
        "admin_ban": 0.3,
        "admin_promote": 1,
        "time": 2,
    }

    def step(self) -> None:
        rng, h = self.rng, self.h
        user = rng.choice(USERS)
        session = self.sessions[user]
        other = rng.choice(USERS)
        room = rng.choice(ROOMS)
        action = rng.choices(list(self.ACTIONS), weights=list(self.ACTIONS.values()))[0]
        if action == "create":
            start = rng.choice([None, None, h.now + rng.uniform(1, 20)])
            self.attempt(
                lambda: h.do(
                    session,
                    m.CreateRoom,
                    room=room,
                    title=rng.choice(["A", "B"]),
                    policy=rng.choice(["open", "approval", "approval", "invite"]),
                    persistent=rng.random() < 0.5,
                    scheduled_for=start,
                    max_speakers=rng.randint(1, 4),
                )
            )
        elif action == "start":
            self.attempt(lambda: h.do(session, m.StartRoom, room=room))
        elif action == "subscribe":
            self.attempt(lambda: h.do(session, m.SubscribeRoom, room=room))
        elif action == "unsubscribe":
            self.attempt(lambda: h.do(session, m.UnsubscribeRoom, room=room))
        elif action == "join":
            invite = rng.choice(self.tokens) if self.tokens and rng.random() < 0.5 else None
            self.attempt(lambda: h.do(session, m.Join, room=room, invite=invite))
        elif action == "leave":
            self.attempt(lambda: h.do(session, m.Leave))
        elif action == "reconnect":
            h.core.disconnect(session, h.now)
            self.pump()
            self.sessions[user] = h.connect(user)
        elif action == "ban":
            duration = rng.choice([None, 5.0, 5.0])
            self.attempt(lambda: h.do(session, m.Ban, user=other, duration=duration))
        elif action == "unban":
            self.attempt(lambda: h.do(session, m.Unban, user=other))
        elif action == "promote":
            self.attempt(lambda: h.do(session, m.Promote, user=other))
        elif action == "demote":
            self.attempt(lambda: h.do(session, m.Demote, user=other))
        elif action == "transfer":
            self.attempt(lambda: h.do(session, m.TransferOwnership, user=other))
        elif action == "update":
            self.attempt(
                lambda: h.do(
                    session,
                    m.UpdateRoom,
                    title=rng.choice([None, "C", "D"]),
                    policy=rng.choice([None, "open", "approval", "invite"]),
                    mute_on_join=rng.choice([None, True, False]),
                )
            )
        elif action == "close":
            self.attempt(lambda: h.do(session, m.CloseRoom))
        elif action == "invite":
            self.attempt(
                lambda: h.do(
                    session,
                    m.CreateInvite,
                    role=rng.choice(["listener", "speaker"]),
                    max_uses=rng.choice([None, 1, 2]),
                    expires_in=rng.choice([None, 3.0]),
                )
            )
        elif action == "revoke" and self.tokens:
            token = rng.choice(self.tokens)
            self.attempt(lambda: h.do(session, m.RevokeInvite, token=token))
        elif action == "knock":
            for host in rng.sample(list(self.sessions.values()), len(self.sessions)):
                where = h.core.session_room(host)
                knocks = list(h.core.rooms[where].knocks) if where else []
                if knocks:
                    request_id = rng.choice(knocks)
                    kind = m.ApproveKnock if rng.random() < 0.7 else m.DenyKnock
                    self.attempt(
                        lambda host=host, kind=kind, rid=request_id: h.do(
                            host, kind, request_id=rid
                        )
                    )
                    break
        elif action == "remove":
            self.attempt(lambda: h.do(session, m.Remove, user=other))
        elif action == "server_ban":
            duration = rng.choice([None, 4.0, 4.0, 4.0])
            self.attempt(
                lambda: h.core.ban_user_globally(self.operator, other, h.now, duration=duration)
            )
        elif action == "server_unban":
            self.attempt(lambda: h.core.unban_user_globally(self.operator, other, h.now))
        elif action == "admin_ban":
            self.attempt(lambda: h.admin(room, m.Ban, user=other, duration=5.0))
        elif action == "admin_promote":
            self.attempt(lambda: h.admin(room, m.Promote, user=other))
        elif action == "time":
            h.advance(rng.choice([0.5, 1.0, 3.0, 6.0]))
            self.pump()

    @property
    def operator(self) -> Any:
        from salon.daemon.core import Identity

        return Identity(user="root", display_name="Operator", operator=True)

    def open_rooms(self) -> dict[str, dict[str, Any]]:
        core = self.h.core
        return {
            room_id: plain(core.room_record(room_id))
            for room_id, room in core.rooms.items()
            if room.state != "closed"
        }


@pytest.mark.parametrize("seed", range(40))
async def test_the_store_follows_the_core(seed: int) -> None:
    driver = Driver(seed)
    for _ in range(300):
        driver.step()
    stored = await driver.store.load()
    assert {r.settings.room: plain(r) for r in stored.rooms} == driver.open_rooms()
    assert plain_bans(stored.server_bans) == plain_bans(driver.h.core.server_bans)

    # A fresh core restored from the store holds the same records.
    fresh = Harness(Limits(knock_ttl=4, owner_grace=3, reminder_lead=5), seed=seed + 1000)
    fresh.now = driver.h.now
    for record in stored.rooms:
        fresh.core.restore_room(record, fresh.now)
    for user, ban in stored.server_bans.items():
        fresh.core.restore_server_ban(user, ban, fresh.now)
    now = fresh.now
    for room_id, record in driver.open_rooms().items():
        expected = dict(record)
        expected["bans"] = {u: b for u, b in record["bans"].items() if Ban(**b).active(now)}
        assert plain(fresh.core.room_record(room_id)) == expected
    assert plain_bans(fresh.core.server_bans) == plain_bans(driver.h.core.active_server_bans(now))


async def test_audit_entries_name_who_what_whom_when_and_where() -> None:
    driver = Driver(0)
    h = driver.h
    h.now = 5000.0
    owner = driver.sessions["u0"]
    h.do(owner, m.CreateRoom, room="r1", title="Room")
    h.do(owner, m.Join, room="r1")
    token = h.do(owner, m.CreateInvite)["invite"]["token"]
    h.do(owner, m.Ban, user="u3", reason="spam")
    h.core.ban_user_globally(driver.operator, "u4", h.now, reason="abuse")
    driver.pump()
    entries = await driver.store.audit_log()
    assert [(e.action, e.actor, e.target, e.room) for e in entries] == [
        ("server_ban", "root", "u4", ""),
        ("ban", "u0", "u3", "r1"),
        ("create_invite", "u0", None, "r1"),
        ("create_room", "u0", None, "r1"),
    ]
    assert all(e.at == 5000.0 for e in entries)
    assert entries[1].detail["reason"] == "spam"
    # Invite tokens are secrets: the log keeps only their first characters.
    shown = entries[2].detail["token"]
    assert shown != token and token.startswith(shown.rstrip("…"))
    assert [e.action for e in await driver.store.audit_log(room="")] == ["server_ban"]
    assert [e.action for e in await driver.store.audit_log(limit=1, before=entries[1].id)] == [
        "create_invite"
    ]


async def test_restore_keeps_persistent_and_scheduled_rooms_only() -> None:
    store = MemoryStore()
    now = 1000.0
    live = RoomSettings(room="live", title="Live", owner="a", created_at=now)
    store.save_room(live)
    store.save_room(
        RoomSettings(room="kept", title="Kept", owner="a", created_at=now, persistent=True)
    )
    store.save_room(
        RoomSettings(
            room="later",
            title="Later",
            owner="a",
            created_at=now,
            state="scheduled",
            scheduled_for=now + 60,
        )
    )
    store.save_ban("kept", "gone", Ban(reason="", until=now - 1, by="a"))
    store.save_ban("kept", "still", Ban(reason="", until=None, by="a"))
    store.save_ban(None, "old", Ban(reason="", until=now - 1, by="root"))
    store.save_ban(None, "eve", Ban(reason="", until=now + 10, by="root"))
    store.add_audit(AuditEntry(at=now, room="live", actor="a", action="ban", target="b"))
    core = Harness().core
    summary = await Persistence(store).restore(core, now)
    assert sorted(summary.rooms) == ["kept", "later"]
    assert summary.dropped_rooms == ["live"]
    assert (summary.server_bans, summary.expired_bans) == (1, 2)
    assert sorted(core.rooms) == ["kept", "later"]
    assert set(core.rooms["kept"].bans) == {"still"}
    assert set(core.server_bans) == {"eve"}
    # The store was tidied; the audit log is never pruned by a restore.
    assert sorted(store.rooms) == ["kept", "later"]
    assert set(store.bans) == {("kept", "still"), (None, "eve")}
    assert len(store.audit) == 1
