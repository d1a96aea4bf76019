"""The bundled loudness guard: its rule on sampled levels, then a real salond muting a speaker
who plays a full-scale tone while another, at a normal level, goes on speaking."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from salon.client.audiofile import write_wav
from salon.daemon.config import ConfigError
from salon.daemon.hooks import AudioLevel
from salon.daemon.hooks.settings import PluginSettings
from salon.daemon.recording.monitor import AudioMonitor
from salon.daemon.wire import messages as msg
from salon.media.codec import OpusEncoder
from salon.media.streams import MediaSender
from salon.plugins.loudness_guard import LoudnessGuard
from tests.audio_checks import tone
from tests.conftest import start_salond
from tests.test_core_support import Harness
from tests.test_e2e_audio import finish, host_client, start_cli

# --------------------------------------------------------------------------- the rule


class FakeAPI:
    """What the guard uses of SalonAPI: settings, the clock, the room's roles, requests."""

    def __init__(self, roles: dict[str, str], **settings: Any) -> None:
        settings.setdefault("decode", False)  # the levels as reported; the monitor is below
        self.settings = PluginSettings("loudness_guard", settings)
        self.clock = 100.0
        self.roles = roles
        self.requests: list[tuple[str | None, msg.Mute]] = []
        self.log = __import__("logging").getLogger("test.loudness_guard")

    def now(self) -> float:
        return self.clock

    def room_state(self, room: str) -> Any:
        participants = [_Participant(user, role) for user, role in self.roles.items()]
        return type("Snapshot", (), {"participants": participants})()

    async def try_request(self, room: str | None, request: msg.Mute) -> dict[str, Any]:
        self.requests.append((room, request))
        return {}


class _Participant:
    def __init__(self, user: str, role: str) -> None:
        self.user, self.role = user, role


async def feed(guard: LoudnessGuard, api: FakeAPI, seconds: float, **levels: int) -> None:
    """Sample every 200 ms for ``seconds``: each user at ``level`` (-dBov), speaking."""
    for _ in range(round(seconds / 0.2)):
        api.clock += 0.2
        await guard.audio_levels("r", [AudioLevel(u, v, True) for u, v in levels.items()])


async def test_the_guard_mutes_only_who_stays_too_loud_long_enough() -> None:
    api = FakeAPI({"loud": "speaker", "fine": "speaker", "host": "owner"}, duration=1.0)
    guard = LoudnessGuard(api)
    await feed(guard, api, 0.8, loud=2, fine=25, host=1)
    assert api.requests == []  # not long enough yet
    await feed(guard, api, 0.4, loud=2, fine=25, host=1)
    [(room, mute)] = api.requests
    assert (room, mute.user) == ("r", "loud")
    assert mute.reason.startswith("too loud: above -6 dBov for 1.")
    await feed(guard, api, 2.0, loud=2, fine=25, host=1)
    assert len(api.requests) == 1  # once per loud stretch; the owner is spared
    # Quiet (or muted) for a moment, then loud again: a new stretch, a new mute.
    await feed(guard, api, 0.2, loud=40)
    await feed(guard, api, 1.2, loud=3)
    assert [m.user for _, m in api.requests] == ["loud", "loud"]
    # Short bursts never add up.
    api.requests.clear()
    for _ in range(5):
        await feed(guard, api, 0.6, fine=1)
        await feed(guard, api, 0.2, fine=30)
    assert api.requests == []


async def test_a_member_who_stopped_sending_is_not_loud() -> None:
    api = FakeAPI({"a": "speaker"}, duration=0.4)
    guard = LoudnessGuard(api)
    for _ in range(10):
        api.clock += 0.2
        await guard.audio_levels("r", [AudioLevel("a", 0, False)])
    assert api.requests == []


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        LoudnessGuard(FakeAPI({}, max_level=3.0))
    with pytest.raises(ConfigError):
        LoudnessGuard(FakeAPI({}, threshold=-3.0))


# --------------------------------------------------------------------------- the monitor


def test_the_monitor_measures_the_audio_not_the_level_the_sender_claims(monkeypatch) -> None:
    h = Harness()
    h.room()
    owner = h.sessions["owner"]
    liar = h.speaker("liar")
    h.do(liar, msg.Unmute)
    h.drain()
    monitor = AudioMonitor(h.core, clock=lambda: h.now)
    monitor.start(thread=False)  # pumped by hand below
    # The sender writes "quiet" (-90 dBov) in every packet while it plays a full-scale tone.
    monkeypatch.setattr("salon.media.streams.measure", lambda pcm: (90, False))
    key = h.member("liar").media_key
    source = MediaSender(key.flow_id, key.ssrc, key.key, OpusEncoder())
    samples = tone([300.0], 1.0, amplitude=0.95)
    for i in range(0, len(samples), 960):
        h.now += 0.02
        datagram = source.send_pcm(samples[i : i + 960].astype("<i2").tobytes())
        assert datagram is not None
        h.core.receive_datagram(liar, datagram, h.now)
        monitor.pump()
    measured = monitor.levels("r1")
    assert set(measured) == {"liar"} and measured["liar"].level < 6, measured
    assert monitor.frames == 50 and monitor.drops == {}
    # What the core (and the audio_levels hook) sees is the sender's claim.
    activities = h.core.rooms["r1"].speaking.activities.values()
    [reported] = [a for a in activities if a.user == "liar"]
    assert reported.smoothed > 80
    # A closed flow is forgotten.
    h.do(owner, msg.MoveToAudience, user="liar")
    for event in h.drain():
        monitor.on_core_event(event)
    monitor.pump()
    assert monitor.levels("r1") == {}
    monitor.stop()
    assert monitor.dropped == 0


# --------------------------------------------------------------------------- real processes


@pytest.mark.e2e
async def test_salond_mutes_a_loud_speaker_and_leaves_a_normal_one_alone(tmp_path: Path) -> None:
    config = tmp_path / "salond.toml"
    config.write_text(
        '[plugins]\nenabled = ["loudness_guard"]\n\n'
        "[plugins.loudness_guard]\nmax_level = -6.0\nduration = 1.0\ndecode = true\n"
    )
    # A full-scale tone is about -3 dBov; the other speaker stays near -23 dBov. Muted, the
    # loud client stops sending (its file never ends): it leaves after --duration.
    write_wav(tmp_path / "loud.wav", tone([300.0], 6.0, amplitude=0.95))
    write_wav(tmp_path / "normal.wav", tone([500.0], 6.0, amplitude=0.1))
    daemon = start_salond(tmp_path / "state", "--config", str(config))
    try:
        host = await host_client(daemon)
        try:
            await host.create_room("Open mic", room="mic")
            await host.join("mic")
            invite = (await host.call("create_invite", role="speaker"))["invite"]["token"]
            loud = start_cli(
                daemon, tmp_path, "Loud", "join", "mic", f"--invite={invite}",
                "--play", str(tmp_path / "loud.wav"), "--duration", "7",
            )  # fmt: skip
            normal = start_cli(
                daemon, tmp_path, "Normal", "join", "mic", f"--invite={invite}",
                "--play", str(tmp_path / "normal.wav"),
            )  # fmt: skip
            names: dict[str, str] = {}
            notice = None
            while notice is None:
                event = await host.next_event(60)
                assert event is not None, "the host's connection closed"
                if isinstance(event, msg.ParticipantJoined):
                    names[event.participant.user] = event.participant.display_name
                elif isinstance(event, msg.MemberMuted):
                    notice = event
            out_loud = await asyncio.to_thread(finish, loud)
            out_normal = await asyncio.to_thread(finish, normal)
            later = host.drain_events()
        finally:
            await host.close()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log_text()
    assert notice.by == "plugin:loudness_guard", notice
    assert notice.reason.startswith("too loud: above -6 dBov"), notice
    assert names[notice.user] == "Loud"
    assert "muted by plugin:loudness_guard" in out_loud, out_loud
    assert "muted by" not in out_normal, out_normal
    # Normal went on to the end of their file unmuted: the guard muted nobody else.
    assert not any(isinstance(e, msg.MemberMuted) for e in later), later
    assert not any(
        isinstance(e, msg.ParticipantUpdated)
        and e.participant.muted_by_moderator
        and names.get(e.participant.user) == "Normal"
        for e in later
    ), later
    log = daemon.log_text()
    assert f"muted {notice.user} in mic" in log and "Traceback" not in log, log
