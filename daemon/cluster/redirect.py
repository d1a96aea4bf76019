"""Which node a joining client is sent to: the redirect policy (PROTOCOL.md section 17).

A node answers a client's first ``join`` with a redirect when another live node is less loaded
by at least ``[cluster] redirect_margin`` sessions (this node counting the joining client).
Only nodes that can serve the room are candidates: those the room directory names as carrying
it, and every node once rooms span nodes (``any_node_serves_room``). Among those, nodes already
carrying the room come first: their members are there, so the room's media crosses no extra
node. The decision reads the registry's cached view (daemon/cluster/registry.py), never Redis,
so a join never waits on the control plane.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from salon.daemon.cluster.registry import NodeInfo

RoomCarriers = Callable[[str], Collection[str]]
"""The ids of the nodes carrying a room (the room directory)."""


def carriers_from_view(nodes: Sequence[NodeInfo]) -> RoomCarriers:
    """The room directory as the registry knows it: the rooms each node lists as carried."""

    def carriers(room: str) -> Collection[str]:
        return {node.node_id for node in nodes if room in node.room_ids}

    return carriers


def choose_node(
    me: str,
    my_sessions: int,
    nodes: Sequence[NodeInfo],
    room: str,
    *,
    margin: int,
    carriers: RoomCarriers | None = None,
    any_node_serves_room: bool = False,
) -> NodeInfo | None:
    """The node to send a client joining ``room`` to, or None to serve it here.

    ``my_sessions`` counts the joining client; ``margin`` 0 never redirects. A node without a
    public address or fingerprint in the registry is never chosen (a client could not check it).
    """
    if margin <= 0:
        return None
    reachable = [n for n in nodes if n.node_id != me and n.public and n.fingerprint]
    carrying = set((carriers or carriers_from_view(nodes))(room))
    groups = [[n for n in reachable if n.node_id in carrying]]
    if any_node_serves_room:
        groups.append(reachable)
    for group in groups:
        if not group:
            continue
        best = min(group, key=lambda n: (n.sessions, n.node_id))
        if my_sessions - best.sessions >= margin:
            return best
    return None


def alternatives(
    me: str, my_public: str, nodes: Sequence[NodeInfo], limit: int
) -> list[dict[str, str]]:
    """The other live nodes a client may reconnect to when it loses this one (the ``hello``
    result's ``nodes``, PROTOCOL.md 17): least loaded first, each address once (workers sharing
    one port are one address, and this node's own is left out), at most ``limit``; a node
    without a public address or fingerprint is left out (a client could not check it)."""
    seen = {my_public}
    found: list[dict[str, str]] = []
    for node in sorted(nodes, key=lambda n: (n.sessions, n.node_id)):
        if node.node_id == me or not node.public or not node.fingerprint:
            continue
        if node.public in seen:
            continue
        seen.add(node.public)
        found.append({"server": node.public, "fingerprint": node.fingerprint, "node": node.node_id})
        if len(found) == limit:
            break
    return found


class Redirector:
    """The server's redirect hook: ``decide(room)`` gives the join result to send, or None.

    ``view`` is the registry's cached list of live nodes and ``sessions`` this node's session
    count now. ``carriers`` and ``any_node_serves_room`` are where the room directory plugs in
    (today: the rooms each node lists in the registry; every node serves every room once rooms
    span nodes).
    """

    def __init__(
        self,
        node_id: Callable[[], str],
        view: Callable[[], Sequence[NodeInfo]],
        sessions: Callable[[], int],
        *,
        margin: int,
        carriers: RoomCarriers | None = None,
        any_node_serves_room: Callable[[], bool] = lambda: False,
    ) -> None:
        self._node_id = node_id
        self._view = view
        self._sessions = sessions
        self.margin = margin
        self.carriers = carriers
        self.any_node_serves_room = any_node_serves_room
        self.sent = 0
        """Redirects sent so far (a metric)."""

    def decide(self, room: str) -> dict[str, Any] | None:
        target = choose_node(
            self._node_id(),
            self._sessions(),
            self._view(),
            room,
            margin=self.margin,
            carriers=self.carriers,
            any_node_serves_room=self.any_node_serves_room(),
        )
        if target is None:
            return None
        self.sent += 1
        return {
            "status": "redirect",
            "server": target.public,
            "fingerprint": target.fingerprint,
            "node": target.node_id,
        }
