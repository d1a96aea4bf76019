"""Speaking detection: hysteresis on RFC 6464 levels, hold time, paced events."""

from __future__ import annotations

import pytest

from salon.daemon.core import SpeakingChanged
from salon.daemon.core.speaking import HOLD, SpeakingDetector
from salon.daemon.wire import messages as m
from tests.test_core_support import Harness, media_datagram, of_type, received

FRAME = 0.02


class Recorder:
    def __init__(self) -> None:
        self.changes = 0

    def __call__(self) -> None:
        self.changes += 1


def detector() -> tuple[SpeakingDetector, Recorder]:
    recorder = Recorder()
    return SpeakingDetector(on_change=recorder), recorder


def test_one_loud_packet_is_not_speech() -> None:
    speaking, changes = detector()
    activity = speaking.track("a")
    activity.update(10, 0.0)
    activity.update(100, FRAME)
    activity.update(100, 2 * FRAME)
    assert not activity.speaking and changes.changes == 0


def test_two_loud_packets_close_together_start_speech() -> None:
    speaking, changes = detector()
    activity = speaking.track("a")
    activity.update(40, 0.0)
    activity.update(50, FRAME)  # the on-threshold is inclusive
    assert activity.speaking and changes.changes == 1
    assert speaking.speaking_users() == {"a"}


def test_loud_packets_far_apart_do_not_start_speech() -> None:
    speaking, _ = detector()
    activity = speaking.track("a")
    activity.update(20, 0.0)
    activity.update(20, 0.3)
    assert not activity.speaking


def test_levels_between_the_thresholds_never_start_but_keep_speech() -> None:
    speaking, changes = detector()
    activity = speaking.track("a")
    for i in range(50):
        activity.update(55, i * FRAME)
    assert not activity.speaking
    activity.update(30, 1.0)
    activity.update(30, 1.0 + FRAME)
    assert activity.speaking
    for i in range(2, 100):  # two seconds of 55: still speaking (hysteresis)
        activity.update(55, 1.0 + i * FRAME)
    assert activity.speaking and changes.changes == 1


def test_quiet_packets_stop_speech_after_the_hold() -> None:
    speaking, changes = detector()
    activity = speaking.track("a")
    activity.update(10, 0.0)
    activity.update(10, FRAME)
    t = FRAME
    while t < FRAME + HOLD - 1e-9:
        t += FRAME
        activity.update(90, t)
        if t < FRAME + HOLD - 1e-9:
            assert activity.speaking
    assert not activity.speaking
    assert changes.changes == 2


def test_silence_without_packets_stops_speech_on_expire() -> None:
    speaking, changes = detector()
    activity = speaking.track("a")
    activity.update(10, 0.0)
    activity.update(10, FRAME)
    assert speaking.deadline() == pytest.approx(FRAME + HOLD)
    speaking.expire(FRAME + HOLD - 0.01)
    assert activity.speaking
    speaking.expire(FRAME + HOLD)
    assert not activity.speaking and changes.changes == 2
    assert speaking.deadline() is None


def test_levels_are_listed_loudest_first() -> None:
    speaking, _ = detector()
    quiet, loud = speaking.track("quiet"), speaking.track("loud")
    for i in range(10):
        quiet.update(45, i * FRAME)
        loud.update(5, i * FRAME)
    levels = speaking.levels()
    assert [level.user for level in levels] == ["loud", "quiet"]
    assert levels[0].level < levels[1].level
    speaking.forget("loud")
    assert [level.user for level in speaking.levels()] == ["quiet"]


# --------------------------------------------------------------------------- in the core


def speaking_room(h: Harness) -> dict[str, int]:
    h.room("owner")
    h.speaker("spk")
    h.join("lis")
    for user in ("owner", "spk"):
        h.do(h.sessions[user], m.Unmute)
    h.drain()
    return h.sessions


def talk(h: Harness, user: str, level: int, frames: int = 2) -> None:
    flow = h.member(user).flow
    assert flow is not None
    for _ in range(frames):
        h.core.receive_datagram(
            h.sessions[user], media_datagram(flow.flow_id, flow.ssrc, level), h.now
        )
        h.advance(FRAME)


def test_speaking_events_reach_every_member_at_a_bounded_rate() -> None:
    h = Harness()
    s = speaking_room(h)
    talk(h, "spk", 20)
    events = h.drain()
    speaking = received(events, m.Speaking)
    assert set(speaking) == set(s.values())
    assert [x.user for x in speaking[s["lis"]][0].speakers] == ["spk"]
    assert of_type(events, SpeakingChanged) == [SpeakingChanged("r1", ["spk"])]
    sent_at = h.now - FRAME  # the event left with the second packet

    talk(h, "owner", 5)  # a change within 200 ms waits for the interval
    assert of_type(h.drain(), SpeakingChanged) == []
    assert h.core.get_timer() == pytest.approx(sent_at + 0.2)
    h.advance(sent_at + 0.2 - h.now)
    events = h.drain()
    assert of_type(events, SpeakingChanged) == [SpeakingChanged("r1", ["owner", "spk"])]
    levels = received(events, m.Speaking)[s["lis"]][0].speakers
    assert [level.user for level in levels] == ["owner", "spk"]


def test_speakers_stop_after_the_hold_without_packets() -> None:
    h = Harness()
    speaking_room(h)
    talk(h, "spk", 20)
    h.drain()
    h.advance(HOLD - 2 * FRAME)
    assert of_type(h.drain(), SpeakingChanged) == []
    h.advance(2 * FRAME)
    assert of_type(h.drain(), SpeakingChanged) == [SpeakingChanged("r1", [])]
    assert h.core.get_timer() is None or h.core.get_timer() > h.now


def test_no_event_when_the_set_is_back_to_what_was_sent() -> None:
    h = Harness()
    s = speaking_room(h)
    talk(h, "spk", 20)
    h.drain()
    h.do(s["spk"], m.MoveToAudience)  # stops within the interval...
    h.do(s["owner"], m.InviteToSpeak, user="spk")
    h.do(s["spk"], m.AcceptSpeak)
    h.do(s["spk"], m.Unmute)
    talk(h, "spk", 20)  # ...and starts again before it elapsed
    h.advance(0.3)
    assert of_type(h.drain(), SpeakingChanged) == []


def test_muted_packets_and_packets_without_level_do_not_count() -> None:
    h = Harness()
    s = speaking_room(h)
    h.do(s["spk"], m.Mute)
    talk(h, "spk", 10, frames=5)
    flow = h.member("owner").flow
    for _ in range(5):
        h.core.receive_datagram(s["owner"], media_datagram(flow.flow_id, flow.ssrc), h.now)
    h.advance(1)
    assert of_type(h.drain(), SpeakingChanged) == []


def test_leaving_the_stage_while_speaking_is_reported() -> None:
    h = Harness()
    s = speaking_room(h)
    talk(h, "spk", 20)
    h.advance(0.3)
    h.drain()
    talk(h, "spk", 20)
    h.do(s["owner"], m.MoveToAudience, user="spk")
    assert of_type(h.drain(), SpeakingChanged) == [SpeakingChanged("r1", [])]
