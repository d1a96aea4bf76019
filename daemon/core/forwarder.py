"""The media forwarder: checks each speaker datagram and fans it out to the listeners' outlets.

The forwarder knows nothing of rooms or roles (the core tells it who may send on which flow and
who receives each group), and it never decrypts: it reads the clear RTP header and forwards the
very same bytes object to every recipient. Recipient lists are rebuilt when membership changes,
so a packet costs one header peek, one dict lookup, a few comparisons and one deque append per
recipient.

The forwarder also watches each flow's RTP sequence number, with one comparison per packet: when
it jumps back by more than half its range (the 16-bit counter wrapped) it calls the flow's
``on_seq_jump``, so that the core can rotate the flow before the rollover counter of a late
receiver goes wrong (PROTOCOL.md 11.8). Setting ``last_seq`` to :data:`NOTIFY_FIRST_PACKET`
makes the same comparison report a flow's first forwarded packet.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from salon.daemon.wire.datagram import MAX_DATAGRAM_SIZE
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.rtp import peek_media

MAX_RETIRED_FLOWS_PER_SESSION = 4
"""Retired flows a session's flow ids keep being recognised for (see :meth:`Forwarder.add_flow`)."""

DROP_REASONS = (
    "malformed",
    "unknown_flow",
    "wrong_sender",
    "ssrc_mismatch",
    "not_speaker",
    "muted",
    "too_large",
    "queue_full",
)
"""Every reason the forwarder counts in :attr:`Forwarder.drops`, in the order it checks them."""

SEQ_WRAP_DISTANCE = 0x8000
"""A sequence number this far below the previous one means the counter wrapped (RFC 3711 3.3.1)."""
NOTIFY_FIRST_PACKET = 0x20000
"""A ``last_seq`` above any sequence number plus :data:`SEQ_WRAP_DISTANCE`: the next packet
reports to ``on_seq_jump``."""


class Outlet:
    """A session's bounded queue of media datagrams waiting to be sent.

    When the queue is full, appending drops the oldest datagram: late audio is worth less than
    fresh audio. The network layer pops from ``queue``.
    """

    __slots__ = ("dropped", "limit", "queue", "session")

    def __init__(self, session: int, limit: int) -> None:
        self.session = session
        self.limit = limit
        self.queue: collections.deque[bytes] = collections.deque(maxlen=limit)
        self.dropped = 0
        """Datagrams this outlet lost to a full queue."""

    def take_all(self) -> list[bytes]:
        """Everything queued now, oldest first; safe on a worker thread while the forwarder
        appends (what arrives meanwhile stays for the next call)."""
        queue = self.queue
        taken = []
        for _ in range(len(queue)):
            try:
                taken.append(queue.popleft())
            except IndexError:
                break
        return taken

    def __repr__(self) -> str:
        return f"Outlet(session={self.session}, queued={len(self.queue)}, dropped={self.dropped})"


class Flow:
    """One speaker's media flow: who may send on it, with which SSRC, and who receives it."""

    __slots__ = (
        "active",
        "flow_id",
        "group",
        "last_seq",
        "muted",
        "on_level",
        "on_seq_jump",
        "packets",
        "predecessor",
        "quality",
        "recipients",
        "red_flow",
        "session",
        "ssrc",
    )

    def __init__(self, flow_id: int, session: int, ssrc: int, group: str) -> None:
        self.flow_id = flow_id
        self.session = session
        self.ssrc = ssrc
        self.group = group
        self.active = True
        """False once retired: the speaker left the stage."""
        self.muted = True
        """Self-muted or muted by a moderator: packets are dropped."""
        self.recipients: list[Outlet] = []
        """Outlets of every member of the group except the sender; replaced, never mutated."""
        self.on_level: Callable[[int, float], None] | None = None
        """Called with ``(level, now)`` for each forwarded packet that carries an audio level."""
        self.last_seq = 0
        """RTP sequence number of the last forwarded packet (0 before the first)."""
        self.on_seq_jump: Callable[[Flow, float], None] | None = None
        """Called with ``(flow, now)`` before forwarding a packet whose sequence number is more
        than :data:`SEQ_WRAP_DISTANCE` below ``last_seq`` (a wrap, or the first packet after
        ``last_seq`` was set to :data:`NOTIFY_FIRST_PACKET`)."""
        self.predecessor: Flow | None = None
        """The flow this one replaces while both are forwarded (a rotation's grace period)."""
        self.packets = 0
        """Packets accepted and forwarded (with the sequence numbers: the uplink's loss)."""
        self.quality: Any = None
        """What listeners report of this flow (kept by the core's reception concern)."""
        self.red_flow: Flow | None = None
        """The speaker's redundancy flow beside this one (PROTOCOL.md 11.10): same sender, its
        own id and SSRC, forwarded only to the sessions :meth:`Forwarder.send_red_flow` names."""

    def __repr__(self) -> str:
        return f"Flow(id={self.flow_id}, session={self.session}, group={self.group!r})"


class Forwarder:
    """Routes media datagrams from senders' flows to the outlets of their group."""

    def __init__(self, max_datagram_size: int = MAX_DATAGRAM_SIZE) -> None:
        self.max_datagram_size = max_datagram_size
        self.received = 0
        """Datagrams offered to :meth:`forward`."""
        self.forwarded = 0
        """Copies appended to outlets (one datagram to N recipients counts N)."""
        self.drops: collections.Counter[str] = collections.Counter()
        """Dropped datagrams by reason (see :data:`DROP_REASONS`)."""
        self.flows: dict[int, Flow] = {}
        """Every known flow by id, retired ones included until their sender disconnects."""
        self._groups: dict[str, dict[int, Outlet]] = {}
        self._group_flows: dict[str, dict[int, Flow]] = {}
        self._session_flows: dict[int, list[int]] = {}

    # -- the hot path

    def forward(self, session: int, datagram: bytes, now: float) -> list[Outlet]:
        """Check a datagram from ``session`` and queue it on every recipient's outlet.

        Returns the outlets that received a copy (shared: do not modify it).
        """
        self.received += 1
        try:
            header = peek_media(datagram)
        except WireError:
            self.drops["malformed"] += 1
            return []
        flow = self.flows.get(header.flow_id)
        if flow is None:
            self.drops["unknown_flow"] += 1
            return []
        if flow.session != session:
            self.drops["wrong_sender"] += 1
            return []
        if header.ssrc != flow.ssrc:
            self.drops["ssrc_mismatch"] += 1
            return []
        if not flow.active:
            self.drops["not_speaker"] += 1
            return []
        if flow.muted:
            self.drops["muted"] += 1
            return []
        if len(datagram) > self.max_datagram_size:
            self.drops["too_large"] += 1
            return []
        seq = header.sequence_number
        if seq + SEQ_WRAP_DISTANCE < flow.last_seq and flow.on_seq_jump is not None:
            flow.on_seq_jump(flow, now)
        flow.last_seq = seq
        flow.packets += 1
        level = header.level
        if level is not None and flow.on_level is not None:
            flow.on_level(level, now)
        recipients = flow.recipients
        full = 0
        for outlet in recipients:
            queue = outlet.queue
            if len(queue) == outlet.limit:
                # The deque's maxlen drops the oldest on append; only the accounting is ours.
                outlet.dropped += 1
                full += 1
            queue.append(datagram)
        self.forwarded += len(recipients)
        if full:
            self.drops["queue_full"] += full
        return recipients

    # -- membership (called by the core on joins, leaves and stage changes)

    def join(self, group: str, outlet: Outlet) -> None:
        """``outlet`` receives every flow of ``group`` from now on (except its own)."""
        self._groups.setdefault(group, {})[outlet.session] = outlet
        for flow in self._group_flows.get(group, {}).values():
            if flow.session != outlet.session:
                flow.recipients = [*flow.recipients, outlet]

    def leave(self, group: str, session: int) -> None:
        """``session`` stops receiving the flows of ``group``."""
        outlets = self._groups.get(group)
        if outlets is None or outlets.pop(session, None) is None:
            return
        if not outlets:
            del self._groups[group]
        for flow in self._group_flows.get(group, {}).values():
            flow.recipients = [o for o in flow.recipients if o.session != session]
            red_flow = flow.red_flow
            if red_flow is not None and red_flow.recipients:
                red_flow.recipients = [o for o in red_flow.recipients if o.session != session]

    def add_flow(self, flow: Flow) -> None:
        """Start accepting ``flow`` and fan it out to the other members of its group."""
        outlets = self._groups.get(flow.group, {})
        flow.recipients = [o for s, o in outlets.items() if s != flow.session]
        self.flows[flow.flow_id] = flow
        self._group_flows.setdefault(flow.group, {})[flow.flow_id] = flow
        owned = self._session_flows.setdefault(flow.session, [])
        owned.append(flow.flow_id)
        # A speaker who goes on and off stage all evening, or talks through many sequence
        # wraps, retires a flow each time: keep only the latest retired ones known (their late
        # packets are counted as not_speaker); older ones become unknown flows, dropped as well.
        retired = [f for f in owned if not self.flows[f].active]
        for flow_id in retired[: max(0, len(retired) - MAX_RETIRED_FLOWS_PER_SESSION)]:
            owned.remove(flow_id)
            del self.flows[flow_id]

    def add_red_flow(self, flow: Flow, red_flow: Flow) -> None:
        """Accept ``red_flow`` from ``flow``'s sender as its redundancy flow, sent to nobody yet.

        It is not in the group's flows, so joining members do not get it: only the sessions
        :meth:`send_red_flow` names do. It goes with ``flow`` (retired, muted by the core).
        """
        red_flow.recipients = []
        flow.red_flow = red_flow
        self.flows[red_flow.flow_id] = red_flow
        self._session_flows.setdefault(red_flow.session, []).append(red_flow.flow_id)

    def send_red_flow(self, flow: Flow, sessions: set[int]) -> None:
        """Forward ``flow``'s redundancy flow to exactly those of ``sessions`` in its group."""
        red_flow = flow.red_flow
        if red_flow is None or not red_flow.active:
            return
        outlets = self._groups.get(flow.group, {})
        red_flow.recipients = [
            o for s, o in outlets.items() if s in sessions and s != red_flow.session
        ]

    def retire_flow(self, flow: Flow) -> None:
        """The speaker left the stage: their packets are dropped as ``not_speaker`` from now on."""
        if flow.red_flow is not None:
            self.retire_flow(flow.red_flow)
        flow.active = False
        flow.recipients = []
        flow.on_level = None
        flow.on_seq_jump = None
        flow.predecessor = None
        flows = self._group_flows.get(flow.group)
        if flows is not None:
            flows.pop(flow.flow_id, None)
            if not flows:
                del self._group_flows[flow.group]

    def tap(self, flow: Flow, outlet: Outlet) -> None:
        """``outlet`` gets a copy of ``flow`` too: a recorder, an audio monitor, a relay.

        A tap is one more recipient (with a session number no real session has), so the hot
        path does not change; it stays until :meth:`untap` or the flow is retired.
        """
        if flow.active and all(o is not outlet for o in flow.recipients):
            flow.recipients = [*flow.recipients, outlet]

    def untap(self, flow: Flow, outlet: Outlet) -> None:
        """``outlet`` stops getting copies of ``flow`` (and of the flow it is replacing)."""
        flow.recipients = [o for o in flow.recipients if o is not outlet]
        old = flow.predecessor
        if old is not None:
            old.recipients = [o for o in old.recipients if o is not outlet]

    def forget_session(self, session: int) -> None:
        """The session is gone: forget its flows (they become unknown) and its memberships."""
        for flow_id in self._session_flows.pop(session, ()):
            flow = self.flows.pop(flow_id, None)
            if flow is not None and flow.active:
                self.retire_flow(flow)
        for group in [g for g, outlets in self._groups.items() if session in outlets]:
            self.leave(group, session)

    def drop_group(self, group: str) -> None:
        """The group is closed: retire its flows and forget its recipients."""
        for flow in list(self._group_flows.get(group, {}).values()):
            self.retire_flow(flow)
        self._groups.pop(group, None)

    def group_sessions(self, group: str) -> list[int]:
        """Sessions receiving ``group`` (for inspection and tests)."""
        return list(self._groups.get(group, {}))
