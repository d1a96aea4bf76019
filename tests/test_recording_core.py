"""The core's side of recording: who may start it, who is asked, and whose audio is tapped."""

from __future__ import annotations

from salon.daemon.core import events
from salon.daemon.wire import messages as m
from salon.daemon.wire.messages import ErrorCode
from tests.test_core_support import Harness, media_datagram, of_type, received


def stage() -> tuple[Harness, int, int, int]:
    """A room with its owner, an unmuted speaker ``spk`` and a listener ``lis``."""
    h = Harness()
    h.room()
    owner = h.sessions["owner"]
    speaker = h.speaker("spk")
    listener = h.join("lis")
    h.do(owner, m.Unmute)
    h.do(speaker, m.Unmute)
    h.drain()
    return h, owner, speaker, listener


def send(h: Harness, user: str, sequence: int = 0) -> bytes:
    member = h.member(user)
    datagram = media_datagram(member.flow.flow_id, member.flow.ssrc, 40, sequence)
    h.core.receive_datagram(member.session, datagram, h.now)
    return datagram


def start(h: Harness, owner: int) -> events.RecordingStarted:
    h.do(owner, m.StartRecording)
    started = of_type(h.drain(), events.RecordingStarted)
    assert len(started) == 1
    return started[0]


def test_start_tells_everyone_and_asks_the_stage() -> None:
    h, owner, speaker, listener = stage()
    result = h.do(owner, m.StartRecording)
    out = h.drain()
    started = of_type(out, events.RecordingStarted)[0]
    assert (started.room, started.by, started.at) == ("r1", "owner", h.now)
    assert result == {"recording": started.recording}
    assert set(received(out, m.RecordingStarted)) == {owner, speaker, listener}
    assert set(received(out, m.RecordingConsentRequested)) == {owner, speaker}
    updated = received(out, m.RoomUpdated)
    assert set(updated) == {owner, speaker, listener}
    assert updated[listener][-1].room.recording is True
    assert h.core.rooms["r1"].summary().recording is True
    # Nobody answered yet: nothing reaches the recorder.
    send(h, "spk")
    assert not started.outlet.queue


def test_only_consenting_speakers_reach_the_recorder() -> None:
    h, owner, speaker, listener = stage()
    outlet = start(h, owner).outlet
    h.do(speaker, m.RecordingConsent, consent=True)
    h.do(owner, m.RecordingConsent, consent=False)
    out = h.drain()
    added = of_type(out, events.RecordingTrackAdded)
    assert [a.key.user for a in added] == ["spk"]
    assert added[0].key == h.member("spk").media_key
    changed = received(out, m.RecordingConsentChanged)
    assert [(e.user, e.consent) for e in changed[listener]] == [("spk", True)]
    spoken = send(h, "spk", 1)
    send(h, "owner", 1)
    assert list(outlet.queue) == [spoken]
    # The listeners still get both.
    assert len(h.core.outlet(listener).queue) == 2


def test_withdrawn_consent_stops_the_tap_at_once() -> None:
    h, owner, speaker, listener = stage()
    outlet = start(h, owner).outlet
    h.do(speaker, m.RecordingConsent, consent=True)
    before = send(h, "spk", 1)
    h.drain()
    h.do(speaker, m.RecordingConsent, consent=False)
    out = h.drain()
    removed = of_type(out, events.RecordingTrackRemoved)
    assert [(r.user, r.flow_id) for r in removed] == [("spk", h.member("spk").flow.flow_id)]
    assert [e.consent for e in received(out, m.RecordingConsentChanged)[listener]] == [False]
    send(h, "spk", 2)
    assert list(outlet.queue) == [before]


def test_muted_speakers_are_not_recorded() -> None:
    h, owner, speaker, _ = stage()
    outlet = start(h, owner).outlet
    h.do(speaker, m.RecordingConsent, consent=True)
    h.do(owner, m.Mute, user="spk")
    send(h, "spk")
    assert not outlet.queue


def test_taking_the_stage_during_a_recording_asks_again() -> None:
    h, owner, speaker, listener = stage()
    start(h, owner)
    h.do(speaker, m.RecordingConsent, consent=True)
    h.drain()
    h.do(owner, m.InviteToSpeak, user="lis")
    h.do(listener, m.AcceptSpeak)
    out = h.drain()
    assert set(received(out, m.RecordingConsentRequested)) == {listener}
    # Leaving the stage forgets the answer: the next stage turn is asked again.
    h.do(speaker, m.MoveToAudience)
    out = h.drain()
    assert [r.user for r in of_type(out, events.RecordingTrackRemoved)] == ["spk"]
    h.do(owner, m.InviteToSpeak, user="spk")
    h.do(speaker, m.AcceptSpeak)
    out = h.drain()
    assert set(received(out, m.RecordingConsentRequested)) == {speaker}
    assert not of_type(out, events.RecordingTrackAdded)


def test_a_member_joining_on_stage_is_asked_after_the_room_state() -> None:
    h, owner, _, _ = stage()
    start(h, owner)
    session = h.connect("mod")
    h.core.rooms["r1"].moderators.append("mod")
    h.do(session, m.Join, room="r1")
    box = [e for e in h.drain() if isinstance(e, events.Deliver) and session in e.sessions]
    kinds = [type(e.message) for e in box]
    assert kinds.index(m.RoomState) < kinds.index(m.RecordingConsentRequested)


def test_stop_untaps_and_tells_everyone() -> None:
    h, owner, speaker, listener = stage()
    outlet = start(h, owner).outlet
    h.do(speaker, m.RecordingConsent, consent=True)
    h.drain()
    h.advance(12.5)
    h.do(owner, m.StopRecording)
    out = h.drain()
    stopped = of_type(out, events.RecordingStopped)[0]
    assert (stopped.by, stopped.reason, stopped.at) == ("owner", "stopped", h.now)
    assert set(received(out, m.RecordingStopped)) == {owner, speaker, listener}
    assert h.core.rooms["r1"].summary().recording is False
    send(h, "spk", 1)
    assert not outlet.queue
    h.refuse(speaker, ErrorCode.NOT_RECORDING, m.RecordingConsent, consent=True)


def test_refusals() -> None:
    h, owner, speaker, listener = stage()
    h.refuse(speaker, ErrorCode.NOT_PERMITTED, m.StartRecording)
    h.refuse(owner, ErrorCode.NOT_RECORDING, m.StopRecording)
    h.refuse(speaker, ErrorCode.NOT_RECORDING, m.RecordingConsent, consent=True)
    start(h, owner)
    h.refuse(owner, ErrorCode.ALREADY_RECORDING, m.StartRecording)
    h.refuse(listener, ErrorCode.NOT_ON_STAGE, m.RecordingConsent, consent=True)
    h.refuse(speaker, ErrorCode.NOT_PERMITTED, m.StopRecording)


def test_closing_the_room_ends_the_recording() -> None:
    h, owner, speaker, _ = stage()
    start(h, owner)
    h.do(speaker, m.RecordingConsent, consent=True)
    h.drain()
    h.do(owner, m.CloseRoom)
    out = h.drain()
    stopped = of_type(out, events.RecordingStopped)
    assert [(s.reason, s.by) for s in stopped] == [("room_closed", "")]
    box = received(out, m.RecordingStopped)
    assert set(box) == {owner, speaker, h.sessions["lis"]}


def test_operator_records_through_the_admin_path() -> None:
    h, _owner, _speaker, _ = stage()
    result = h.admin("r1", m.StartRecording)
    started = of_type(h.drain(), events.RecordingStarted)[0]
    assert started.by == "root" and result["recording"] == started.recording
    h.admin("r1", m.StopRecording)
    assert of_type(h.drain(), events.RecordingStopped)[0].by == "root"


def test_a_failed_recorder_ends_the_recording() -> None:
    h, owner, _, listener = stage()
    recording = start(h, owner).recording
    assert not h.core.stop_recording("r1", "other", "failed", h.now)
    assert h.core.stop_recording("r1", recording, "failed", h.now)
    out = h.drain()
    assert received(out, m.RecordingStopped)[listener][0].reason == "failed"
    assert not h.core.stop_recording("r1", recording, "failed", h.now)


def test_monitors_tap_every_flow() -> None:
    h, owner, _speaker, listener = stage()
    outlet, keys = h.core.add_monitor(64)
    assert sorted(key.user for _, key in keys) == ["owner", "spk"]
    h.do(owner, m.InviteToSpeak, user="lis")
    h.do(listener, m.AcceptSpeak)
    opened = of_type(h.drain(), events.FlowOpened)
    assert [o.key.user for o in opened] == ["lis"]
    h.do(listener, m.Unmute)
    send(h, "lis")
    send(h, "spk")
    assert len(outlet.queue) == 2
    h.do(listener, m.MoveToAudience)
    assert [c.user for c in of_type(h.drain(), events.FlowClosed)] == ["lis"]
    h.core.remove_monitor(outlet)
    send(h, "spk", 1)
    assert len(outlet.queue) == 2


def test_recording_ids_never_look_like_command_line_options() -> None:
    h, owner, _speaker, _listener = stage()
    ids = set()
    for _ in range(300):  # a leading "-" comes once in 64 draws
        ids.add(start(h, owner).recording)
        h.do(owner, m.StopRecording)
        h.drain()
    assert len(ids) == 300
    assert all(len(i) == 12 and not i.startswith("-") for i in ids)
    assert any(i.startswith("_") for i in ids)


def test_a_moderator_mute_tells_the_target_and_the_hosts_who_and_why() -> None:
    h, owner, speaker, _listener = stage()
    h.admin("r1", m.Mute, user="spk", reason="too loud")
    out = h.drain()
    [muted] = received(out, m.Muted)[speaker]
    assert (muted.by, muted.reason) == ("root", "too loud")
    notices = received(out, m.MemberMuted)
    assert set(notices) == {owner}
    assert (notices[owner][0].user, notices[owner][0].reason) == ("spk", "too loud")
    audit = of_type(out, events.ModerationTaken)[0]
    assert audit.detail == {"reason": "too loud"}
