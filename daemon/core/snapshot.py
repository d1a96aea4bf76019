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
    snapshot = messages.RoomSnapshot(
        summary=room.summary(),
        you=viewer.user if viewer is not None else "",
        hand_queue_total=len(room.hands) if host_view else 0,
        knocks_total=len(room.knocks) if host_view else 0,
    )
    empty = messages.RoomState(room=snapshot)
    # The flag may flip to true below: count its longer spelling now.
    budget = _Budget(len(messages.encode(empty)) + len("true") - len("false"))
    participants = snapshot.participants
    listed: set[str] = set()

    def add(member: Member) -> bool:
        participant = room.participant(member)
        size = _size(participant)
        key = member.media_key
        if key is not None:
            size += _size(key)
        if not budget.take(size):
            return False
        participants.append(participant)
        listed.add(member.user)
        if key is not None:
            snapshot.media_keys.append(key)
        return True

    for member in room.stage_members.values():
        add(member)
    if viewer is not None and viewer.user not in listed:
        add(viewer)
    if host_view:
        for user in room.hands.users():
            if not budget.take(len(messages.encode(user)) + 1):
                break
            snapshot.hand_queue.append(user)
        for request in room.knocks.values():
            info = request.info()
            if not budget.take(_size(info)):
                break
            snapshot.knocks.append(info)
        for user in snapshot.hand_queue:
            hand = room.members.get(user)
            if hand is not None and user not in listed and not add(hand):
                break
    more = listeners
    for member in room.members.values():
        if more <= 0:
            break
        if member.user in listed:
            continue
        if not add(member):
            break
        more -= 1
    snapshot.partial = len(participants) < len(room.members)
    return snapshot
