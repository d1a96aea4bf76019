"""Rotation of a speaker's flow when its RTP sequence number wraps (PROTOCOL.md 11.8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from salon.daemon.core import Flow, events
from salon.daemon.core.events import Deliver
from salon.daemon.core.keys import ROTATION_GRACE
from salon.daemon.recording import JsonRecordingIndex, RecordingService
from salon.daemon.wire import messages as m
from salon.media.codec import OpusEncoder
from salon.media.streams import MediaSender
from tests.audio_checks import band_energy, tone
from tests.test_core_support import Harness, media_datagram, of_type, received
from tests.test_recording import decode_file, frames_of, onset


def stage(h: Harness) -> dict[str, int]:
    """Room r1: owner, unmuted speaker spk, listener lis."""
    h.room("owner")
    h.speaker("spk")
    h.join("lis")
    h.do(h.sessions["spk"], m.Unmute)
    h.drain()
    return h.sessions


def flow_of(h: Harness, user: str = "spk") -> Flow:
    flow = h.member(user).flow
    assert flow is not None
    return flow


def send(h: Harness, flow: Flow, seq: int) -> list[int]:
    """The sessions that got a copy of one packet of ``flow`` numbered ``seq``."""
    datagram = media_datagram(flow.flow_id, flow.ssrc, level=40, sequence=seq)
    outlets = h.core.receive_datagram(flow.session, datagram, h.now)
    return sorted(o.session for o in outlets)


def send_across_wrap(h: Harness, flow: Flow, start: int = 0xFFF0, count: int = 40) -> None:
    for i in range(count):
        send(h, flow, (start + i) & 0xFFFF)


def test_no_rotation_without_a_wrap() -> None:
    h = Harness()
    stage(h)
    flow = flow_of(h)
    for seq in range(100, 1100):
        send(h, flow, seq)
    send(h, flow, 90)  # reordering is not a wrap
    assert flow_of(h) is flow
    assert not of_type(h.drain(), events.FlowOpened)


def test_wrap_rotates_once_and_members_get_the_new_key() -> None:
    h = Harness()
    s = stage(h)
    old = flow_of(h)
    old_key = h.member("spk").media_key
    send_across_wrap(h, old)
    send(h, old, 0xFFFF)  # a late packet from before the wrap, then more after it
    send_across_wrap(h, old, start=0x0030, count=5)
    out = h.drain()
    assert len(of_type(out, events.FlowOpened)) == 1
    new = flow_of(h)
    assert new is not old and new.flow_id != old.flow_id and new.ssrc != old.ssrc
    key = h.member("spk").media_key
    assert key.flow_id == new.flow_id and key.epoch == old_key.epoch + 1
    assert key.key != old_key.key
    got = received(out, m.MediaKeyEvent)
    # Every member, the speaker included, gets exactly one new key.
    assert set(got) == {s["owner"], s["spk"], s["lis"]}
    assert all([e.key for e in box] == [key] for box in got.values())
    assert not received(out, m.MediaKeyRevoked)
    # The room snapshot of a member who joins now holds only the new key.
    late = h.join("late")
    snapshot = received(h.drain(), m.RoomState)[late][0]
    assert [k.flow_id for k in snapshot.room.media_keys if k.user == "spk"] == [new.flow_id]


def test_old_flow_works_until_the_new_one_is_used_then_is_revoked() -> None:
    h = Harness()
    s = stage(h)
    old = flow_of(h)
    send_across_wrap(h, old)
    new = flow_of(h)
    h.drain()
    # Grace: packets still in flight on the old flow are forwarded.
    assert send(h, old, 0x0100) == [s["owner"], s["lis"]]
    assert not received(h.drain(), m.MediaKeyRevoked)
    # The speaker's first packet on the new flow retires the old one.
    assert send(h, new, 0xFFFE) == [s["owner"], s["lis"]]
    out = h.drain()
    revoked = received(out, m.MediaKeyRevoked)
    assert set(revoked) == {s["owner"], s["spk"], s["lis"]}
    assert all([e.flow_id for e in box] == [old.flow_id] for box in revoked.values())
    assert [e.flow_id for e in of_type(out, events.FlowClosed)] == [old.flow_id]
    assert send(h, old, 0x0101) == []
    assert h.core.forwarder.drops["not_speaker"] == 1
    # The new flow (itself about to wrap) goes on without another rotation for now.
    assert send(h, new, 0xFFFF) == [s["owner"], s["lis"]]
    assert flow_of(h) is new
    assert not of_type(h.drain(), events.FlowOpened)
    # The grace timer finds nothing left to do.
    h.advance(ROTATION_GRACE * 2)
    assert not received(h.drain(), m.MediaKeyRevoked)


def test_old_flow_is_revoked_after_the_grace_if_the_new_one_stays_silent() -> None:
    h = Harness()
    s = stage(h)
    old = flow_of(h)
    send_across_wrap(h, old)
    h.drain()
    h.advance(ROTATION_GRACE / 2)
    assert send(h, old, 0x0200) == [s["owner"], s["lis"]]
    assert not received(h.drain(), m.MediaKeyRevoked)
    h.advance(ROTATION_GRACE)
    revoked = received(h.drain(), m.MediaKeyRevoked)
    assert [e.flow_id for e in revoked[s["lis"]]] == [old.flow_id]
    assert send(h, old, 0x0201) == []


def test_mute_and_leaving_the_stage_cover_the_old_flow_too() -> None:
    h = Harness()
    s = stage(h)
    old = flow_of(h)
    send_across_wrap(h, old)
    new = flow_of(h)
    h.do(s["spk"], m.Mute)
    assert old.muted and new.muted
    h.do(s["spk"], m.Unmute)
    assert not old.muted and not new.muted
    h.drain()
    h.do(s["owner"], m.MoveToAudience, user="spk")
    out = h.drain()
    revoked = [e.flow_id for e in received(out, m.MediaKeyRevoked)[s["lis"]]]
    assert sorted(revoked) == sorted([old.flow_id, new.flow_id])
    assert not old.active and not new.active
    h.advance(ROTATION_GRACE * 2)
    assert not received(h.drain(), m.MediaKeyRevoked)


def test_a_recording_follows_the_rotated_flow() -> None:
    h = Harness()
    s = stage(h)
    h.do(s["owner"], m.StartRecording)
    h.do(s["spk"], m.RecordingConsent, consent=True)
    outlet = h.core.rooms["r1"].active_recording.outlet
    h.drain()
    old = flow_of(h)
    send_across_wrap(h, old)
    new = flow_of(h)
    out = h.drain()
    added = of_type(out, events.RecordingTrackAdded)
    assert [e.key.flow_id for e in added] == [new.flow_id]
    assert not of_type(out, events.RecordingTrackRemoved)
    assert not received(out, m.RecordingConsentChanged)
    outlet.queue.clear()
    send(h, old, 0x0300)
    send(h, new, 0x1000)
    assert len(outlet.queue) == 2
    removed = of_type(h.drain(), events.RecordingTrackRemoved)
    assert [(e.user, e.flow_id) for e in removed] == [("spk", old.flow_id)]


def test_room_close_during_the_grace_closes_both_flows() -> None:
    h = Harness()
    s = stage(h)
    old = flow_of(h)
    send_across_wrap(h, old)
    new = flow_of(h)
    h.drain()
    h.do(s["owner"], m.CloseRoom)
    closed = {e.flow_id for e in of_type(h.drain(), events.FlowClosed) if e.user == "spk"}
    assert closed == {old.flow_id, new.flow_id}
    h.advance(ROTATION_GRACE * 2)
    h.drain()


async def test_the_recorder_follows_the_rotated_key_without_a_gap(tmp_path: Path) -> None:
    h = Harness()
    s = stage(h)
    index = JsonRecordingIndex(tmp_path / "recordings.json")
    service = RecordingService(tmp_path / "rec", index, hold=0.2, clock=lambda: h.now)
    h.do(s["owner"], m.StartRecording)
    h.do(s["spk"], m.RecordingConsent, consent=True)
    key = h.member("spk").media_key
    # The speaker's client: it wraps after 30 packets and follows its newest own key.
    source = MediaSender(key.flow_id, key.ssrc, key.key, OpusEncoder(), sequence_number=0xFFE1)
    flows = [key.flow_id]
    for pcm in frames_of(tone([440.0], 2.0)):
        for event in h.drain():
            service.on_core_event(event)
            if isinstance(event, Deliver) and isinstance(event.message, m.MediaKeyEvent):
                new = event.message.key
                if new.user == "spk" and new.flow_id != source.flow_id:
                    source = MediaSender(new.flow_id, new.ssrc, new.key, OpusEncoder())
                    flows.append(new.flow_id)
        h.now += 0.02
        datagram = source.send_pcm(pcm)
        assert datagram is not None
        h.core.receive_datagram(s["spk"], datagram, h.now)
        service.pump()
    assert len(flows) == 2
    h.now += 0.5
    h.do(s["owner"], m.StopRecording)
    for event in h.drain():
        service.on_core_event(event)
    service.pump()
    [info] = index.entries()
    assert info.status == "complete" and info.speakers == ["spk"]
    assert service.stats().drops == {}
    audio = decode_file(Path(info.path), tmp_path)
    assert band_energy(audio, 440.0) > 0.9
    # The tone is there on both sides of the rotation (at 0.6 s): no frame of it is missing.
    start = onset(audio)
    loud = np.abs(audio[int((start + 0.05) * 48000) : int((start + 1.9) * 48000)])
    frames = loud[: len(loud) // 960 * 960].reshape(-1, 960).max(axis=1)
    assert frames.min() > 3000
