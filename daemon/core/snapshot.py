"""The ``room_state`` a member gets: bounded, whatever the size of the audience.

A room's audience is unbounded, but a control message is at most 64 KiB (PROTOCOL.md 3.1). The
snapshot therefore lists, in this order of priority and while the encoded ``room_state`` stays
under the limit: the stage (each member with its media key), the receiver, the raised hands and
pending knocks (for hosts), then at most ``listeners`` other listeners. Whatever is left out is
counted (``partial``, ``hand_queue_total``, ``knocks_total``, the summary's counts) and can be
paged with ``list_participants``.

The bound is by construction: every item is measured as encoded before it is added. What must
always be there -- the summary and the receiver's user id -- is bounded by the text rules and
the identity bounds (see ``tests/test_room_state_bounds.py``, which encodes the worst case).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from salon.daemon.wire import messages

if TYPE_CHECKING:
    from .room import Member, Room

SNAPSHOT_BUDGET = messages.MAX_MESSAGE_SIZE
"""Bytes a whole ``room_state`` event may take once encoded."""


def _size(item: messages.Participant | messages.MediaKey | messages.JoinRequestInfo) -> int:
    # One more byte: the comma that separates it from its neighbour in its array.
    return len(messages.encode(item)) + 1


class _Budget:
    def __init__(self, used: int) -> None:
        self.left = SNAPSHOT_BUDGET - used

    def take(self, size: int) -> bool:
        if size > self.left:
            return False
        self.left -= size
        return True


def bounded_snapshot(
    room: Room, viewer: Member | None, host_view: bool, listeners: int
) -> messages.RoomSnapshot:
    """The room as ``viewer`` sees it (None: the operator's view), under the message limit."""
    # The candidates, in order of priority: the stage, the receiver, the raised hands (hosts),
    # then up to ``listeners`` other listeners.
    chosen: dict[str, Member] = dict(room.stage_members)
    if viewer is not None:
        chosen.setdefault(viewer.user, viewer)
    hands = room.hands.users() if host_view else []
    knocks = [k.info() for k in room.knocks.values()] if host_view else []
    for user in hands:
        hand = room.members.get(user)
        if hand is not None:
            chosen.setdefault(user, hand)
    more = listeners
    for member in room.members.values():
        if more <= 0:
            break
        if member.user not in chosen:
            chosen[member.user] = member
            more -= 1
    snapshot = messages.RoomSnapshot(
        summary=room.summary(),
        participants=[room.participant(m) for m in chosen.values()],
        hand_queue=hands,
        knocks=knocks,
        media_keys=[m.media_key for m in chosen.values() if m.media_key is not None],
        you=viewer.user if viewer is not None else "",
        partial=len(chosen) < len(room.members),
        hand_queue_total=len(hands),
        knocks_total=len(knocks),
    )
    # The common case, measured once: everything chosen fits.
    if len(messages.encode(messages.RoomState(room=snapshot))) <= SNAPSHOT_BUDGET:
        return snapshot
    return _fitted(snapshot, list(chosen.values()), host_view)


def _fitted(
    whole: messages.RoomSnapshot, chosen: list[Member], host_view: bool
) -> messages.RoomSnapshot:
    """``whole`` cut to the message limit, item by item in order of priority: the stage members
    and the receiver, the hand queue, the knocks, then the other participants."""
    snapshot = messages.RoomSnapshot(
        summary=whole.summary,
        you=whole.you,
        partial=False,
        hand_queue_total=whole.hand_queue_total,
        knocks_total=whole.knocks_total,
    )
    # The flag may flip to true below: count its longer spelling now.
    used = len(messages.encode(messages.RoomState(room=snapshot))) + len("true") - len("false")
    budget = _Budget(used)
    participants = {p.user: p for p in whole.participants}
    keys = {k.user: k for k in whole.media_keys}
    first = [m for m in chosen if m.on_stage or m.user == whole.you]
    rest = [m for m in chosen if not (m.on_stage or m.user == whole.you)]

    def add(member: Member) -> bool:
        participant = participants[member.user]
        size = _size(participant)
        key = keys.get(member.user)
        if key is not None:
            size += _size(key)
        if not budget.take(size):
            return False
        snapshot.participants.append(participant)
        if key is not None:
            snapshot.media_keys.append(key)
        return True

    for member in first:
        add(member)
    for user in whole.hand_queue:
        if not budget.take(len(msgspec.json.encode(user)) + 1):
            break
        snapshot.hand_queue.append(user)
    for info in whole.knocks:
        if not budget.take(_size(info)):
            break
        snapshot.knocks.append(info)
    for member in rest:
        if not add(member):
            break
    snapshot.partial = True
    return snapshot
