"""Every server message about a room fits one control message (64 KiB), in the worst case.

The worst case is built from the bounds where data enters: text at its widest in cells with the
most bytes a cell may take (a 4-byte letter carrying 3 combining marks of 4 bytes each), user ids
and verified attributes at the identity bounds, a full stage plus moderators, thousands of raised
hands and hundreds of knocks with the longest trust notes. Each message is encoded as the server
sends it and measured.
"""

from __future__ import annotations

import pytest

from salon.daemon.auth import MAX_DISPLAY_NAME, clean_display_name
from salon.daemon.core import Limits
from salon.daemon.core.identity import (
    MAX_USER_ID_BYTES,
    MAX_VERIFIED,
    MAX_VERIFIED_BYTES,
    Identity,
    identity_problem,
)
from salon.daemon.core.room import MAX_DESCRIPTION, MAX_SPEAKERS, MAX_TITLE, MAX_TOPIC, MAX_TOPICS
from salon.daemon.hooks.policy import MAX_TRUST, MAX_TRUST_TEXT
from salon.daemon.wire import messages as m
from salon.daemon.wire.text import MAX_MARKS, check_text, clean_text
from tests.test_core_support import Harness, received

MARK = "\U0001d167"  # MUSICAL SYMBOL COMBINING TREMOLO-1: a combining mark of 4 bytes


def heavy(cells: int, base: int = 0x1D400) -> str:
    """``cells`` cells of the heaviest text the rule lets through: 16 bytes a cell."""
    return (chr(base) + MARK * MAX_MARKS) * cells


def user_id(i: int) -> str:
    prefix = f"user{i}-"
    return prefix + "x" * (MAX_USER_ID_BYTES - len(prefix))


def verified(i: int) -> dict[str, str]:
    return {
        f"{k}-".ljust(MAX_VERIFIED_BYTES, "k"): f"{i}-".ljust(MAX_VERIFIED_BYTES, "v")
        for k in range(MAX_VERIFIED)
    }


@pytest.fixture(scope="module")
def worst() -> Harness:
    name = heavy(MAX_DISPLAY_NAME)
    assert clean_display_name(name) == name
    assert len(name.encode()) == 16 * MAX_DISPLAY_NAME
    h = Harness(Limits(snapshot_listeners=1000, audience_events_above=10_000))

    def connect(user: str) -> int:
        identity = Identity(user=user, display_name=name, verified=verified(len(h.sessions)))
        assert identity_problem(identity) is None
        return h.connect(user, name=name, verified=identity.verified)

    owner = user_id(0)
    connect(owner)
    topics = [heavy(MAX_TOPIC, base=0x1D400 + i) for i in range(MAX_TOPICS)]
    h.room(
        owner,
        room="r" * 64,
        title=heavy(MAX_TITLE),
        description=heavy(MAX_DESCRIPTION),
        topics=topics,
        max_speakers=MAX_SPEAKERS,
    )
    room = h.core.rooms["r" * 64]
    assert room.title == heavy(MAX_TITLE) and room.topics == topics
    n = 1
    while room.stage_count() < MAX_SPEAKERS:
        connect(user_id(n))
        h.join(user_id(n), room=room.id)
        h.do(h.sessions[owner], m.InviteToSpeak, user=user_id(n))
        h.do(h.sessions[user_id(n)], m.AcceptSpeak)
        n += 1
    for _ in range(20):  # promoted moderators are on stage beyond max_speakers
        connect(user_id(n))
        h.moderator(user_id(n), room=room.id, by=owner)
        n += 1
    for _ in range(800):
        connect(user_id(n))
        h.join(user_id(n), room=room.id)
        h.do(h.sessions[user_id(n)], m.RaiseHand)
        h.drain()
        n += 1
    h.do(h.sessions[owner], m.StartRecording)
    h.do(h.sessions[owner], m.UpdateRoom, policy="approval")
    trust = [chr(0x1D400 + i) * MAX_TRUST_TEXT for i in range(MAX_TRUST)]
    assert all(clean_text(t)[:MAX_TRUST_TEXT] == t for t in trust)
    for _ in range(200):
        connect(user_id(n))
        session = h.sessions[user_id(n)]
        h.core.handle_request(session, m.Join(id=1, room=room.id), h.now, trust=trust)
        n += 1
    h.drain()
    return h


def fits(message: m.Event | m.Ok) -> int:
    size = len(m.encode(message))
    assert size <= m.MAX_MESSAGE_SIZE, f"{type(message).__name__} of {size} bytes"
    return size


def test_the_heaviest_text_is_what_the_text_rule_lets_through() -> None:
    assert check_text("title", heavy(3), max_width=3) == heavy(3)
    # More marks on a cell are dropped, including zero-width combiners outside Mn/Me.
    assert check_text("title", "a" + MARK * 10, max_width=3) == "a" + MARK * 3
    assert check_text("title", "a" + "\U0001d165" * 10, max_width=3) == "a" + "\U0001d165" * 3


def test_every_room_message_fits_in_the_worst_case(worst: Harness) -> None:
    h = worst
    room = next(iter(h.core.rooms.values()))
    owner = h.sessions[user_id(0)]
    listener = h.sessions[user_id(MAX_SPEAKERS + 25)]
    host_state = h.core.room_snapshot(room.id, owner)
    sizes = {
        "room_state (host)": fits(m.RoomState(room=host_state)),
        "room_state (listener)": fits(m.RoomState(room=h.core.room_snapshot(room.id, listener))),
        "room_state (operator)": fits(m.RoomState(room=h.core.room_snapshot(room.id))),
        "room_updated": fits(m.RoomUpdated(room=room.summary())),
    }
    assert host_state.partial and host_state.knocks_total == 200
    assert host_state.hand_queue_total == 800
    # Stage members come first, each with its key; here (names of 1 KiB, identities of 2 KiB,
    # a summary of 42 KiB) not all of them fit: the rest are paged like listeners.
    roles = [p.role for p in host_state.participants]
    stage = {p.user for p in host_state.participants if p.role != "listener"}
    assert roles[: len(stage)] == [r for r in roles if r != "listener"]
    assert 0 < len(stage) < MAX_SPEAKERS + 20
    assert {k.user for k in host_state.media_keys} == stage
    member = room.members[user_id(MAX_SPEAKERS + 30)]
    sizes["participant_updated"] = fits(
        m.ParticipantUpdated(room=room.id, participant=room.participant(member))
    )
    loudest = [m.SpeakerLevel(user=user_id(i), level=0) for i in range(m.MAX_SPEAKING_LISTED)]
    sizes["speaking"] = fits(m.Speaking(room=room.id, speakers=loudest))
    sizes["join ok"] = fits(
        m.Ok(
            re=m.MAX_REQUEST_ID,
            result={"status": "joined", "role": "listener", "room": room.summary()},
        )
    )
    knock = next(iter(room.knocks.values()))
    sizes["knock"] = fits(m.Knock(room=room.id, request=knock.info()))
    # Events the fixture caused, as sent.
    h.do(h.sessions[user_id(MAX_SPEAKERS + 26)], m.LowerHand)
    events = h.drain()
    (hands,) = received(events, m.HandQueue)[owner]
    sizes["hand_queue"] = fits(hands)
    # Every page of list_participants, at the largest limit.
    after = None
    listed = 0
    while True:
        result = h.do(owner, m.ListParticipants, after=after, limit=m.MAX_PARTICIPANTS_PAGE)
        sizes["list_participants"] = fits(m.Ok(re=m.MAX_REQUEST_ID, result=result))
        listed += len(result["participants"])
        after = result["next"]
        if after is None:
            break
    assert listed == len(room.members)
    print(sizes)


def test_token_users_are_held_to_the_identity_bound() -> None:
    from salon.daemon.config import MAX_TOKEN_USER_BYTES, ConfigError, load_config

    assert MAX_TOKEN_USER_BYTES == MAX_USER_ID_BYTES
    load_config(None, {"auth.tokens": {"secret-token": "u" * MAX_USER_ID_BYTES}})
    with pytest.raises(ConfigError) as info:
        load_config(None, {"auth.tokens": {"secret-token": "u" * (MAX_USER_ID_BYTES + 1)}})
    assert "at most 128 bytes" in str(info.value)
