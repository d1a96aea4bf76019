"""How each speaker's audio reaches the room: listeners' receiver reports, the server's own view
of the uplink, and the ``loss_report`` each speaker gets to size its redundancy.

A listener sends ``receiver_report`` every 1-2 s with, per speaker flow, the packets it expected,
lost and got late and its jitter. Each flow keeps the latest report of each listener (for
:data:`REPORT_TTL` seconds). The forwarder counts the packets it accepts on the flow, and the
sequence numbers say how many were sent, so the server knows the uplink loss without reading a
byte of audio. At most every :data:`LOSS_REPORT_INTERVAL` seconds, when a report comes in, the
speaker is told the larger of the uplink loss and the 75th percentile of the listeners' loss:
a robust figure that one listener on a bad link cannot push up for the whole room, since
redundancy costs every listener's bandwidth.

The forwarder cannot rewrite an encrypted payload, so RED (payload type 63) reaches every
member once a speaker sends it. The report therefore also says whether the speaker may send
RED (``red``): only while every other member receiving the room's datagrams (not in stream
mode) declared it decodes RED in its ``hello``. When one without it starts receiving them
(it enters, or leaves stream mode), the server tells each speaker that was allowed RED at
once, without waiting for the next report, so that it goes back to plain Opus.

A speaker whose client sends a redundancy flow (PROTOCOL.md 11.10) gets no per-packet RED:
its flow stays plain Opus for everybody and a second flow of its own carries the copies. The
server decides per listener, from that listener's own reports, who gets that second flow
(:data:`RED_FLOW_ON`, :data:`RED_FLOW_OFF`), and asks the speaker to send it (``red_flow``)
while at least one does. ``bench/redundancy_cost.py`` chose this: one lossy listener then
costs the server +50% of its output at 3 listeners, +2% at 100, against +112% for RED in
every packet, and it is protected however many clean listeners outvote it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from .context import Actor, Concern, CoreContext, TimerKind
from .errors import CoreError
from .forwarder import Flow
from .results import Done, Result
from .room import Member, Room

MIN_REPORT_INTERVAL = 0.5
"""A session's reports closer together than this are refused with ``rate_limited``."""
REPORT_TTL = 5.0
"""A listener's report counts for this many seconds."""
LOSS_REPORT_INTERVAL = 1.0
"""A speaker gets a ``loss_report`` at most this often."""
PERCENTILE = 0.75
RED_FLOW_ON = 0.02
"""A listener whose own report shows this much loss gets the speaker's redundancy flow."""
RED_FLOW_OFF = 0.005
"""...and stops getting it after :data:`RED_FLOW_HOLD` reports in a row below this."""
RED_FLOW_HOLD = 2


@dataclass
class _Listened:
    loss: float
    late: float
    jitter_ms: float
    at: float


@dataclass
class FlowQuality:
    """Reports and uplink counters of one flow (kept on the flow, gone with it)."""

    reports: dict[int, _Listened] = field(default_factory=dict)
    """Latest report by listener session."""
    last_report: messages.LossReport | None = None
    """The last ``loss_report`` sent to the speaker about this flow."""
    last_sent: float = float("-inf")
    seq_mark: int | None = None
    packets_mark: int = 0
    red_flow_to: dict[int, int] = field(default_factory=dict)
    """Listener sessions the redundancy flow goes to, with their low reports in a row."""
    red_flow_expiry: float | None = None
    """When the timer that stops the redundancy flow to listeners gone quiet is due."""


def percentile(values: list[float], fraction: float = PERCENTILE) -> float:
    """Nearest-rank percentile of ``values`` (not empty): index round(fraction * (n - 1))."""
    ordered = sorted(values)
    return ordered[round(fraction * (len(ordered) - 1))]


def _stale(report: _Listened, now: float) -> bool:
    return now - report.at >= REPORT_TTL


class Reception(Concern):
    """Receiver reports in, ``loss_report`` events out."""

    def __init__(self, ctx: CoreContext) -> None:
        super().__init__(ctx)
        ctx.on_timer(TimerKind.RED_FLOW_EXPIRY, self._red_flow_expired)

    def receiver_report(self, actor: Actor, request: messages.ReceiverReport, now: float) -> Result:
        member = self._self(actor)
        for entry in request.reports:
            if entry.lost > entry.expected or entry.late > entry.expected:
                raise CoreError(
                    ErrorCode.INVALID_VALUE,
                    f"flow {entry.flow_id}: lost and late cannot exceed expected",
                )
        if now - member.last_report < MIN_REPORT_INTERVAL:
            raise CoreError(
                ErrorCode.RATE_LIMITED,
                f"receiver reports at most every {MIN_REPORT_INTERVAL} s",
            )
        member.last_report = now
        room = actor.room
        speakers = {
            m.flow.flow_id: m
            # Only the stage has flows: a report costs the stage's size, not the audience's.
            for m in room.stage_members.values()
            if m.flow is not None and m.session != member.session
        }
        for entry in request.reports:
            speaker = speakers.get(entry.flow_id)
            if speaker is None:
                continue  # a flow revoked meanwhile, or none of this room: nothing to tell
            flow = speaker.flow
            assert flow is not None
            quality = flow.quality
            if quality is None:
                quality = flow.quality = FlowQuality()
            loss = entry.lost / entry.expected
            quality.reports[member.session] = _Listened(
                loss, entry.late / entry.expected, entry.jitter_ms, now
            )
            asked = self._choose_red_flow(room, member, flow, quality, loss, now)
            self._tell(room, speaker, flow, quality, now, force=asked)
        return Done()

    def _choose_red_flow(
        self,
        room: Room,
        listener: Member,
        flow: Flow,
        quality: FlowQuality,
        loss: float,
        now: float,
    ) -> bool:
        """Whether ``listener`` gets ``flow``'s redundancy flow, from its own loss, with
        hysteresis; return True when the speaker must now be told to start or stop it."""
        if flow.red_flow is None:
            return False
        targets = quality.red_flow_to
        session = listener.session
        if listener.red_flow and loss >= RED_FLOW_ON:
            targets[session] = 0
        elif session in targets and (loss < RED_FLOW_OFF or not listener.red_flow):
            targets[session] += 1
            if targets[session] >= RED_FLOW_HOLD:
                del targets[session]
        elif session in targets:
            targets[session] = 0
        self._drop_quiet_red_flow_listeners(room, flow, quality, now)
        told = quality.last_report is not None and quality.last_report.red_flow
        return bool(targets) != told

    def _drop_quiet_red_flow_listeners(
        self, room: Room, flow: Flow, quality: FlowQuality, now: float
    ) -> None:
        """Stop the redundancy flow to listeners that no longer receive datagrams or whose
        last report is :data:`REPORT_TTL` old, and arm the timer for the next such expiry: a
        listener that stops reporting must not keep the flow until someone else reports."""
        targets = quality.red_flow_to
        receiving = set(self.forwarder.group_sessions(room.id))
        reports = quality.reports
        for gone in [
            s for s in targets if s not in receiving or s not in reports or _stale(reports[s], now)
        ]:
            del targets[gone]
        self.forwarder.send_red_flow(flow, set(targets))
        if targets:
            due = min(reports[s].at for s in targets) + REPORT_TTL
            if quality.red_flow_expiry is None or due < quality.red_flow_expiry:
                quality.red_flow_expiry = due
                self._push_timer(due, TimerKind.RED_FLOW_EXPIRY, room, str(flow.flow_id))

    def _red_flow_expired(self, room: Room, key: str, now: float) -> None:
        speaker = next(
            (
                m
                for m in room.stage_members.values()
                if m.flow is not None and str(m.flow.flow_id) == key
            ),
            None,
        )
        flow = speaker.flow if speaker is not None else None
        quality = flow.quality if flow is not None else None
        if speaker is None or flow is None or quality is None:
            return  # the flow is gone (its speaker left the stage, or it was rotated)
        if quality.red_flow_expiry is None or now < quality.red_flow_expiry:
            return  # an earlier timer of the flow; the one armed last is due later
        quality.red_flow_expiry = None
        if not quality.red_flow_to:
            return
        self._drop_quiet_red_flow_listeners(room, flow, quality, now)
        last = quality.last_report
        if not quality.red_flow_to and last is not None and last.red_flow:
            quality.last_report = report = msgspec.structs.replace(last, red_flow=False)
            self._send((speaker.session,), report)

    def _tell(
        self,
        room: Room,
        speaker: Member,
        flow: Flow,
        quality: FlowQuality,
        now: float,
        *,
        force: bool = False,
    ) -> None:
        if now - quality.last_sent < LOSS_REPORT_INTERVAL and not force:
            return
        reports = quality.reports
        for session in [s for s, r in reports.items() if _stale(r, now)]:
            del reports[session]
        if not reports:
            return
        quality.last_sent = now
        uplink = self._uplink_loss(flow, quality)
        listened = list(reports.values())
        # Listeners that get the redundancy flow have their loss covered by it: the flow's own
        # protection (FEC, bitrate) is for the others, so they do not push it up.
        protected = quality.red_flow_to
        bare = [r.loss for s, r in reports.items() if s not in protected]
        heard_loss = percentile(bare) if bare else 0.0
        quality.last_report = report = messages.LossReport(
            room=room.id,
            flow_id=flow.flow_id,
            loss=round(max(uplink, heard_loss), 4),
            uplink_loss=round(uplink, 4),
            late=round(percentile([r.late for r in listened]), 4),
            jitter_ms=round(percentile([r.jitter_ms for r in listened]), 1),
            reporters=len(listened),
            # A speaker that has a redundancy flow protects the lossy listeners with it alone.
            red=flow.red_flow is None and self._red_allowed(room, speaker),
            red_flow=bool(quality.red_flow_to),
        )
        self._send((speaker.session,), report)

    def _red_allowed(self, room: Room, speaker: Member) -> bool:
        # Members in stream mode get no datagrams: their client's RED support does not matter.
        # Members on another node of a cluster (relayed) get them through the room's relay;
        # their hello went to that node, so they count as without RED.
        receiving = set(self.forwarder.group_sessions(room.id))
        sessions = self._sessions
        return all(
            m.red
            for m in room.members.values()
            if m.session != speaker.session
            and (
                m.session in receiving
                or ((state := sessions.get(m.session)) is not None and state.relayed)
            )
        )

    def receiver_added(self, room: Room, member: Member) -> None:
        """A member now gets the room's datagrams (it entered, or left stream mode); without
        RED, speakers allowed RED must stop it at once (11.9)."""
        if member.red:
            return
        for speaker in room.members.values():
            flow = speaker.flow
            if speaker is member or flow is None or flow.quality is None:
                continue
            last = flow.quality.last_report
            if last is None or not last.red:
                continue
            flow.quality.last_report = report = msgspec.structs.replace(last, red=False)
            self._send((speaker.session,), report)

    def receiver_removed(self, room: Room, session: int) -> None:
        """``session`` no longer gets the room's datagrams (it left, or went to stream mode):
        a speaker whose redundancy flow went to it alone stops sending it at once (11.10)."""
        for speaker in room.stage_members.values():
            flow = speaker.flow
            quality = flow.quality if flow is not None else None
            if flow is None or quality is None or session not in quality.red_flow_to:
                continue
            del quality.red_flow_to[session]
            self.forwarder.send_red_flow(flow, set(quality.red_flow_to))
            last = quality.last_report
            if not quality.red_flow_to and last is not None and last.red_flow:
                quality.last_report = report = msgspec.structs.replace(last, red_flow=False)
                self._send((speaker.session,), report)

    @staticmethod
    def _uplink_loss(flow: Flow, quality: FlowQuality) -> float:
        """Loss between the speaker and the server since the previous loss report."""
        seq = flow.last_seq
        if seq > 0xFFFF:  # a rotated flow's first packet has not come yet
            return 0.0
        previous, quality.seq_mark = quality.seq_mark, seq
        packets = flow.packets - quality.packets_mark
        quality.packets_mark = flow.packets
        if previous is None:
            return 0.0
        expected = (seq - previous) & 0xFFFF
        if expected <= 0 or packets >= expected:
            return 0.0
        return 1.0 - packets / expected
