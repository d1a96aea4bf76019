"""The recorder: Ogg Opus muxing, placement by RTP timestamp, mixing, the service and its index."""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from salon.client.audiofile import read_audio
from salon.daemon.core import events
from salon.daemon.recording import (
    JsonRecordingIndex,
    OggOpusWriter,
    RecordingInfo,
    RecordingService,
    RoomRecorder,
    Track,
)
from salon.daemon.recording.oggopus import PRE_SKIP, ogg_crc
from salon.daemon.store import SqliteStore
from salon.daemon.wire import messages as m
from salon.media.codec import OpusEncoder
from salon.media.streams import MediaSender
from tests.audio_checks import band_energy, tone
from tests.test_core_support import Harness

FRAME = 960


def frames_of(samples: np.ndarray) -> list[bytes]:
    padded = np.concatenate([samples, np.zeros(-len(samples) % FRAME, dtype=np.int16)])
    return [padded[i : i + FRAME].astype("<i2").tobytes() for i in range(0, len(padded), FRAME)]


def opus_packets(samples: np.ndarray) -> list[bytes]:
    encoder = OpusEncoder()
    return [encoder.encode(frame) for frame in frames_of(samples)]


def decode_file(path: Path, tmp_path: Path) -> np.ndarray:
    out = tmp_path / (path.stem + ".wav")
    subprocess.run(["opusdec", "--quiet", str(path), str(out)], check=True, timeout=30)
    return read_audio(out)


def check_opusinfo(path: Path) -> str:
    done = subprocess.run(["opusinfo", str(path)], capture_output=True, text=True, timeout=30)
    text = done.stdout + done.stderr
    assert done.returncode == 0 and "WARNING" not in text and "ERROR" not in text, text
    return text


def onset(samples: np.ndarray, threshold: int = 2000) -> float:
    """Seconds until the signal first gets loud."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    return float(loud[0]) / 48000 if len(loud) else float("inf")


# --------------------------------------------------------------------------- Ogg Opus


def reference_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def test_ogg_crc_is_the_ogg_polynomial() -> None:
    for size in (0, 1, 27, 300, 4096):
        data = os.urandom(size)
        assert ogg_crc(data) == reference_crc(data)


def test_writer_output_passes_opusinfo_with_the_exact_length(tmp_path: Path) -> None:
    samples = tone([440.0], 3.0)
    packets = opus_packets(np.concatenate([samples, np.zeros(FRAME, dtype=np.int16)]))
    path = tmp_path / "tone.opus"
    with path.open("wb") as stream:
        writer = OggOpusWriter(stream, comments={"TITLE": "A tone"})
        for packet in packets:
            writer.write_packet(packet)
        writer.close(length=len(samples))
    info = check_opusinfo(path)
    assert "Playback length: 0m:03.000s" in info
    assert "TITLE=A tone" in info
    decoded = decode_file(path, tmp_path)
    assert len(decoded) == len(samples)
    assert band_energy(decoded, 440.0) > 0.95
    head = path.read_bytes()[28:47]
    assert head[:8] == b"OpusHead"
    version, channels, pre_skip, rate = struct.unpack("<BBHI", head[8:16])
    assert (version, channels, pre_skip, rate) == (1, 1, PRE_SKIP, 48000)


# --------------------------------------------------------------------------- Track


def track_with(packets: list[tuple[int, int, bytes, float]]) -> Track:
    track = Track("alice")
    for seq, ts, payload, arrival in packets:
        track.add(seq, ts, payload, arrival)
    return track


def stream(count: int, *, first_seq: int = 65530, first_ts: int = 4294967000) -> list:
    """``count`` consecutive packets of a 440 Hz tone, wrapping both counters."""
    packets = opus_packets(tone([440.0], count * 0.02))
    return [
        ((first_seq + i) % 65536, (first_ts + i * FRAME) % 2**32, packets[i], 10.0 + i)
        for i in range(count)
    ]


def test_track_places_packets_by_timestamp_from_the_first_arrival() -> None:
    track = track_with(stream(20))
    rendered = list(track.render(25))
    assert [frame for frame, _ in rendered] == list(range(10, 25))
    assert [frame for frame, _ in track.flush()] == list(range(25, 30))
    assert track.stats.frames == 20 and track.stats.late == 0


def test_track_rebuilds_lost_packets_and_keeps_dtx_silent() -> None:
    packets = stream(30)
    lost_one = packets[:5] + packets[6:]  # one packet lost: FEC
    track = track_with(lost_one)
    frames = [frame for frame, _ in track.flush()]
    assert frames == list(range(10, 40))
    assert track.stats.fec == 1 and track.stats.concealed == 0

    lost_three = packets[:5] + packets[8:]  # three lost: concealment then FEC
    track = track_with(lost_three)
    assert [frame for frame, _ in track.flush()] == list(range(10, 40))
    assert (track.stats.concealed, track.stats.fec) == (2, 1)

    # DTX: the sequence goes on, the timestamp jumps 10 frames: those frames stay silent.
    seq, ts, payload, _ = packets[5]
    dtx = [*packets[:5], (seq, ts + 10 * FRAME, payload, 25.0)]
    track = track_with(dtx)
    assert [frame for frame, _ in track.flush()] == [*range(10, 15), 25]
    assert track.stats.fec == track.stats.concealed == 0


def test_track_reorders_and_drops_what_comes_too_late() -> None:
    packets = stream(10)
    track = track_with(packets[::-1])
    assert [frame for frame, _ in track.render(15)] == list(range(10, 15))
    seq, ts, payload, _ = packets[2]
    track.add(seq, ts, payload, 30.0)  # its place was written already
    assert track.stats.late == 1
    assert [frame for frame, _ in track.flush()] == list(range(15, 20))


def test_track_places_a_talk_spurt_anew_when_arrivals_move() -> None:
    packets = stream(10)
    track = Track("alice")
    for seq, ts, payload, arrival in packets:
        track.add(seq, ts, payload, arrival)
    assert next(frame for frame, _ in track.render(100)) == 10
    # After a DTX pause the sender's clock runs 6 frames late: the next spurt is moved.
    seq, ts, payload, _ = packets[-1]
    for i in range(5):
        track.add(seq + 1 + i, ts + (50 + i) * FRAME, payload, 10 + 9 + 50 - 6 + i)
    frames = [frame for frame, _ in track.flush()]
    assert frames[0] == 19 + 50 - 6 and track.stats.reanchors == 1
    # Arrival times marked unsure never move anything.
    track2 = Track("bob")
    track2.add(1, 0, payload, 5.0)
    track2.add(2, FRAME, payload, None)
    track2.add(3, 50 * FRAME, payload, None)
    assert [frame for frame, _ in track2.flush()] == [5, 6, 55]


# --------------------------------------------------------------------------- RoomRecorder


def sender(flow_id: int, ssrc: int) -> tuple[MediaSender, str]:
    key = base64.b64encode(os.urandom(28)).decode()
    return MediaSender(flow_id, ssrc, key, OpusEncoder()), key


def test_recorder_mixes_speakers_at_their_place(tmp_path: Path) -> None:
    alice, alice_key = sender(5, 111)
    bob, bob_key = sender(9, 222)
    path = tmp_path / "mix.opus"
    recorder = RoomRecorder(path, 1000.0, comments={"TITLE": "t"}, hold=0.3)
    recorder.add_track("alice", 5, 111, alice_key)
    recorder.add_track("bob", 9, 222, bob_key)
    a = frames_of(tone([440.0], 3.0))
    b = frames_of(tone([1000.0], 2.0))
    for i in range(250):
        now = 1000.5 + i * 0.02  # Alice from 0.5 s, Bob (joining late) from 2.5 s
        if i < len(a) and (d := alice.send_pcm(a[i])):
            recorder.receive(d, now + 0.004)
        if 100 <= i < 100 + len(b) and (d := bob.send_pcm(b[i - 100])):
            recorder.receive(d, now + 0.011)
        recorder.advance(now)
    result = recorder.finish(1006.0)
    assert result.duration == pytest.approx(6.0)
    assert result.speakers == ["alice", "bob"]
    assert recorder.stats.drops == {} and recorder.stats.late_frames == 0
    check_opusinfo(path)
    audio = decode_file(path, tmp_path)
    assert len(audio) == 6 * 48000
    assert onset(audio) == pytest.approx(0.5, abs=0.03)
    both = audio[int(2.7 * 48000) : int(3.4 * 48000)]
    assert band_energy(both, 440.0) > 0.3 and band_energy(both, 1000.0) > 0.3
    only_bob = audio[int(3.7 * 48000) : int(4.4 * 48000)]
    assert band_energy(only_bob, 1000.0) > 0.95
    assert np.abs(audio[int(4.7 * 48000) :]).max() < 100


def test_recorder_drops_what_it_cannot_read(tmp_path: Path) -> None:
    alice, key = sender(5, 111)
    stranger, _ = sender(7, 333)
    impostor = MediaSender(5, 111, base64.b64encode(os.urandom(28)).decode(), OpusEncoder())
    recorder = RoomRecorder(tmp_path / "x.opus", 0.0)
    recorder.add_track("alice", 5, 111, key)
    pcm = frames_of(tone([440.0], 0.1))[0]
    for source in (stranger, impostor):
        datagram = source.send_pcm(pcm)
        assert datagram is not None
        recorder.receive(datagram, 0.1)
    recorder.receive(b"\x05", 0.1)
    assert recorder.stats.drops == {"unknown_flow": 1, "auth_failed": 1, "malformed": 1}
    datagram = alice.send_pcm(pcm)
    assert datagram is not None
    recorder.receive(datagram, 0.1)
    recorder.remove_track(5)  # what came before the withdrawal stays
    result = recorder.finish(1.0)
    assert result.speakers == ["alice"] and result.duration == pytest.approx(1.0)


# --------------------------------------------------------------------------- the service


def core_with_recording() -> tuple[Harness, int, int]:
    h = Harness()
    h.room()
    owner = h.sessions["owner"]
    speaker = h.speaker("spk")
    h.do(speaker, m.Unmute)
    h.drain()
    return h, owner, speaker


def speak(h: Harness, user: str, source: MediaSender, pcm: bytes) -> None:
    datagram = source.send_pcm(pcm)
    if datagram is not None:
        h.core.receive_datagram(h.member(user).session, datagram, h.now)


async def test_service_records_what_the_core_taps(tmp_path: Path) -> None:
    h, owner, speaker = core_with_recording()
    index = JsonRecordingIndex(tmp_path / "recordings.json")
    service = RecordingService(tmp_path / "rec", index, hold=0.2, clock=lambda: h.now)
    h.do(owner, m.StartRecording)
    h.do(speaker, m.RecordingConsent, consent=True)
    for event in h.drain():
        service.on_core_event(event)
    service.pump()
    key = h.member("spk").media_key
    source = MediaSender(key.flow_id, key.ssrc, key.key, OpusEncoder())
    for pcm in frames_of(tone([440.0], 2.0)):
        h.now += 0.02
        speak(h, "spk", source, pcm)
        service.pump()
    h.now += 0.5
    h.do(owner, m.StopRecording)
    for event in h.drain():
        service.on_core_event(event)
    service.pump()
    [info] = index.entries()
    assert info.status == "complete" and info.speakers == ["spk"] and info.by == "owner"
    assert info.duration == pytest.approx(2.5, abs=0.021)
    assert service.stats().completed == 1 and service.stats().drops == {}
    audio = decode_file(Path(info.path), tmp_path)
    assert band_energy(audio, 440.0) > 0.9


async def test_service_thread_survives_a_failing_recorder(tmp_path: Path, monkeypatch) -> None:
    h, owner, _speaker = core_with_recording()
    index = JsonRecordingIndex(tmp_path / "recordings.json")
    failed: list[tuple[str, str]] = []
    done = asyncio.Event()

    def on_failure(room: str, recording: str) -> None:
        failed.append((room, recording))
        done.set()

    service = RecordingService(tmp_path / "rec", index, on_failure=on_failure, clock=lambda: h.now)
    await service.start()
    try:

        def disk_full(self: RoomRecorder, now: float) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(RoomRecorder, "advance", disk_full)
        recording = h.do(owner, m.StartRecording)["recording"]
        for event in h.drain():
            service.on_core_event(event)
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await service.stop()
    assert failed == [("r1", recording)]
    [info] = index.entries()
    assert info.status == "failed"
    # The daemon then ends the recording in the core: the room is told.
    assert h.core.stop_recording("r1", recording, "failed", h.now)


async def test_service_finishes_running_recordings_when_it_stops(tmp_path: Path) -> None:
    h, owner, _speaker = core_with_recording()
    index = JsonRecordingIndex(tmp_path / "recordings.json")
    # The service's clock is the core's: the harness's, not the machine's (a recording that
    # started at the harness's t=1000 s and ended "now" would be 56 years of silence).
    service = RecordingService(tmp_path / "rec", index, clock=lambda: h.now)
    await service.start()
    h.do(owner, m.StartRecording)
    started = [e for e in h.drain() if isinstance(e, events.RecordingStarted)]
    service.on_core_event(started[0])
    h.now += 0.5
    await service.stop()
    [info] = index.entries()
    assert info.status == "complete" and info.ended_at == h.now
    assert info.duration == pytest.approx(0.5)
    check_opusinfo(Path(info.path))


class WaitRecordingQueue(queue.SimpleQueue[Any]):
    """The service's command queue, noting how long each of the worker's waits may last."""

    def __init__(self) -> None:
        self.waits: list[float | None] = []
        self.changed = threading.Condition()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        with self.changed:
            self.waits.append(timeout)
            self.changed.notify_all()
        return super().get(block, timeout)

    def wait_for(self, expected: float | None, after: int) -> int:
        """Block until a wait with ``expected`` follows the first ``after``; its index."""
        with self.changed:
            found = self.changed.wait_for(lambda: expected in self.waits[after:], timeout=10)
            assert found, self.waits
            return self.waits.index(expected, after)


async def test_the_worker_sleeps_while_nothing_is_recorded(tmp_path: Path) -> None:
    """Without a running recording the worker waits for a command without a time-out (no
    polling beside the event loop); while one runs it drains every ``poll``."""
    h, owner, _speaker = core_with_recording()
    index = JsonRecordingIndex(tmp_path / "recordings.json")
    service = RecordingService(tmp_path / "rec", index, clock=lambda: h.now)
    commands = WaitRecordingQueue()
    service._commands = commands
    await service.start()
    try:
        assert await asyncio.to_thread(commands.wait_for, None, 0) == 0
        recording = h.do(owner, m.StartRecording)["recording"]
        for event in h.drain():
            service.on_core_event(event)
        polling = await asyncio.to_thread(commands.wait_for, service.poll, 1)
        h.now += 0.5
        h.do(owner, m.StopRecording)
        for event in h.drain():
            service.on_core_event(event)
        await asyncio.to_thread(commands.wait_for, None, polling + 1)
    finally:
        await service.stop()
    [info] = index.entries()
    assert (info.id, info.status) == (recording, "complete")


async def test_service_refuses_a_start_time_far_from_its_clock(tmp_path: Path) -> None:
    """A start time the service's clock disagrees with by more than a minute would mean
    writing that much silence at once: the recording fails instead."""
    h, owner, _speaker = core_with_recording()
    index = JsonRecordingIndex(tmp_path / "recordings.json")
    service = RecordingService(tmp_path / "rec", index, clock=lambda: h.now + 3600)
    recording = h.do(owner, m.StartRecording)["recording"]
    for event in h.drain():
        service.on_core_event(event)
    service.pump()
    [info] = index.entries()
    assert (info.id, info.status) == (recording, "failed")
    assert service.stats().failed == 1
    assert not list((tmp_path / "rec").glob("*.opus"))


async def test_a_stalled_disk_delays_the_file_not_the_audio(tmp_path: Path, monkeypatch) -> None:
    """The worker thread stuck in a write: the core still forwards every packet to the room,
    the recording's outlet keeps its bound (oldest dropped, counted), and once the disk is
    back the recording completes with what the outlet held."""
    h, owner, speaker = core_with_recording()
    index = JsonRecordingIndex(tmp_path / "recordings.json")
    service = RecordingService(tmp_path / "rec", index, hold=0.2, clock=lambda: h.now)
    stalled, resume = threading.Event(), threading.Event()
    advance = RoomRecorder.advance

    def slow_disk(self: RoomRecorder, now: float) -> None:
        stalled.set()
        resume.wait(30)
        advance(self, now)

    monkeypatch.setattr(RoomRecorder, "advance", slow_disk)
    await service.start()
    try:
        h.do(owner, m.StartRecording)
        h.do(speaker, m.RecordingConsent, consent=True)
        started = None
        for event in h.drain():
            service.on_core_event(event)
            if isinstance(event, events.RecordingStarted):
                started = event
        assert started is not None
        assert await asyncio.to_thread(stalled.wait, 30)
        key = h.member("spk").media_key
        source = MediaSender(key.flow_id, key.ssrc, key.key, OpusEncoder())
        owner_outlet = h.core.outlet(owner)
        limit = started.outlet.limit
        sent = 0
        for pcm in frames_of(tone([440.0], (limit + 500) * 0.02)):
            h.now += 0.02
            datagram = source.send_pcm(pcm)
            assert datagram is not None
            outlets = h.core.receive_datagram(speaker, datagram, h.now)
            # Forwarded to the room as always, whatever the recorder is doing.
            assert owner_outlet in outlets
            sent += 1
        assert len(started.outlet.queue) == limit
        assert started.outlet.dropped == sent - limit
    finally:
        resume.set()
        await service.stop()
    [info] = index.entries()
    assert info.status == "complete" and info.speakers == ["spk"]
    assert service.stats().drops["queue_full"] == sent - limit
    check_opusinfo(Path(info.path))
    # What the outlet kept (the newest packets) is where it was spoken, up to the end.
    audio = decode_file(Path(info.path), tmp_path)
    assert len(audio) == round(info.duration * 48000) == sent * FRAME
    assert onset(audio) == pytest.approx((sent - limit) * 0.02, abs=0.05)
    assert band_energy(audio[-48000:], 440.0) > 0.9


def test_json_index_marks_unfinished_recordings_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "recordings.json"
    index = JsonRecordingIndex(path)
    index.begin(RecordingInfo(id="a", room="r1", path="/x.opus", started_at=5.0))
    index.begin(RecordingInfo(id="b", room="r2", path="/y.opus", started_at=6.0))
    reopened = JsonRecordingIndex(path)
    assert [(e.id, e.status) for e in reopened.entries()] == [
        ("b", "interrupted"),
        ("a", "interrupted"),
    ]
    assert [e.id for e in reopened.entries("r1")] == ["a"]


async def test_store_keeps_the_index(tmp_path: Path) -> None:
    from salon.daemon.recording import StoreRecordingIndex

    store = SqliteStore(tmp_path / "salon.db")
    await store.start()
    try:
        index = StoreRecordingIndex(store)
        info = RecordingInfo(id="a", room="r1", path="/x.opus", started_at=5.0, by="owner")
        index.begin(info)
        index.finish(
            RecordingInfo(
                id="a",
                room="r1",
                path="/x.opus",
                started_at=5.0,
                by="owner",
                ended_at=65.0,
                duration=60.0,
                speakers=["spk"],
                status="complete",
                bytes=1234,
            )
        )
        index.begin(RecordingInfo(id="b", room="r2", path="/y.opus", started_at=7.0))
        await store.commit()
        assert [r.id for r in await index.recordings()] == ["b", "a"]
        found = await index.get("a")
        assert found is not None and found.speakers == ["spk"] and found.duration == 60.0
        assert await index.get("zzz") is None
    finally:
        await store.stop()
    store = SqliteStore(tmp_path / "salon.db")
    await store.start()
    try:
        StoreRecordingIndex(store)  # a new salond: b was left running
        await store.commit()
        b = await store.recording("b")
        assert b is not None and b.status == "interrupted"
        assert [r.id for r in await store.recordings("r1")] == ["a"]
    finally:
        await store.stop()


# --------------------------------------------------------------------------- bounds


def bounded_service(
    tmp_path: Path, h: Harness, **bounds: Any
) -> tuple[RecordingService, JsonRecordingIndex, list[tuple[str, str, str]]]:
    index = JsonRecordingIndex(tmp_path / "recordings.json")
    reported: list[tuple[str, str, str]] = []

    def on_limit(room: str, recording: str, why: str) -> None:
        reported.append((room, recording, why))

    service = RecordingService(
        tmp_path / "rec", index, hold=0.2, clock=lambda: h.now, on_limit=on_limit, **bounds
    )
    return service, index, reported


def stop_at_bound(h: Harness, service: RecordingService, reported: list[Any]) -> list[Any]:
    """What salond does with a reported bound: stop the recording in the core."""
    [(room, recording, why)] = reported
    assert h.core.stop_recording(room, recording, "limit", h.now, why=why)
    out = h.drain()
    for event in out:
        service.on_core_event(event)
    service.pump()
    return out


async def test_a_recording_stops_at_its_maximum_duration(tmp_path: Path) -> None:
    h, owner, speaker = core_with_recording()
    service, index, reported = bounded_service(tmp_path, h, max_duration=1.0)
    recording = h.do(owner, m.StartRecording)["recording"]
    h.do(speaker, m.RecordingConsent, consent=True)
    for event in h.drain():
        service.on_core_event(event)
    service.pump()
    key = h.member("spk").media_key
    source = MediaSender(key.flow_id, key.ssrc, key.key, OpusEncoder())
    for pcm in frames_of(tone([440.0], 2.0)):
        h.now += 0.02
        speak(h, "spk", source, pcm)
        service.pump()
        if reported:
            break
    assert reported == [("r1", recording, "max duration of 1 s reached")]
    out = stop_at_bound(h, service, reported)
    # The room is told why, and the audit log says who stopped it and why.
    stopped = [
        e.message
        for e in out
        if isinstance(e, events.Deliver) and isinstance(e.message, m.RecordingStopped)
    ]
    assert stopped and all(s.reason == "limit" and s.by == "" for s in stopped)
    [audit] = [e for e in out if isinstance(e, events.ModerationTaken)]
    assert (audit.actor, audit.action) == ("salond", "stop_recording")
    assert audit.detail == {
        "recording": recording,
        "reason": "limit",
        "why": "max duration of 1 s reached",
    }
    [info] = index.entries()
    assert info.status == "complete" and info.duration == pytest.approx(1.0, abs=0.021)
    check_opusinfo(Path(info.path))


async def test_recordings_stop_when_their_disk_space_is_used_up(tmp_path: Path) -> None:
    h, owner, speaker = core_with_recording()
    service, index, reported = bounded_service(tmp_path, h, disk_limit=16_000)
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "older.opus").write_bytes(b"\0" * 8000)
    recording = h.do(owner, m.StartRecording)["recording"]
    h.do(speaker, m.RecordingConsent, consent=True)
    for event in h.drain():
        service.on_core_event(event)
    service.pump()
    assert reported == []  # 8,000 of 16,000 bytes used: it starts
    key = h.member("spk").media_key
    source = MediaSender(key.flow_id, key.ssrc, key.key, OpusEncoder())
    frames = 0
    for pcm in frames_of(tone([440.0], 10.0)):
        h.now += 0.02
        frames += 1
        speak(h, "spk", source, pcm)
        service.pump()
        if reported:
            break
    [(room, rid, why)] = reported
    assert (room, rid) == ("r1", recording) and why.endswith("bound 16000 bytes")
    assert 2 * 50 < frames < 10 * 50  # stopped by the bound, after the file grew
    stop_at_bound(h, service, reported)
    [info] = index.entries()
    assert info.status == "complete" and info.bytes >= 8000
    check_opusinfo(Path(info.path))
    # Now full: a new recording is stopped at once.
    reported.clear()
    second = h.do(owner, m.StartRecording)["recording"]
    for event in h.drain():
        service.on_core_event(event)
    service.pump()
    assert [r[1] for r in reported] == [second]
