"""Over a lossy path: the client leaves on time, and the relay itself does what it says.

salond runs in the test's event loop with a speaker playing a tone; a ``salon join --duration``
process listens and records through :mod:`tests.lossy_relay`, which loses 5% of the packets in
both directions in bursts (mean burst length 2). The process must end by itself shortly after
its deadline: a lost ``leave`` reply or close handshake must not keep it alive, so the
path is cut for good just before the deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from salon.client.connection import RequestError, SalonClient
from salon.client.room_audio import RoomAudio
from salon.daemon.wire import messages as msg
from salon.daemon.wire.datagram import unpack_datagram
from salon.media.codec import OpusDecoder
from salon.media.srtp import SrtpError, SrtpReceiver, key_from_base64
from tests.audio_checks import dominant_frequencies
from tests.conftest import run_daemon
from tests.lossy_relay import Impairment, _Direction, lossy_relay
from tests.netem_path import netem_arguments, netem_path, netem_unavailable
from tests.test_reconnect import eventually
from tests.test_reliability_support import AudioProbe, record, tone_frames

BURSTY = Impairment(loss=0.05, burst_length=2.0)


def test_gilbert_elliott_loss_has_the_asked_rate_and_burst_length():
    direction = _Direction(BURSTY, random.Random(3))
    outcomes = [direction.lose() for _ in range(200_000)]
    rate = sum(outcomes) / len(outcomes)
    bursts = [0]
    for lost in outcomes:
        if lost:
            bursts[-1] += 1
        elif bursts[-1]:
            bursts.append(0)
    bursts = [b for b in bursts if b]
    assert 0.045 < rate < 0.055
    assert 1.8 < sum(bursts) / len(bursts) < 2.2
    independent = _Direction(Impairment(loss=0.05), random.Random(3))
    runs = [independent.lose() for _ in range(200_000)]
    assert 0.045 < sum(runs) / len(runs) < 0.055


def test_same_seed_same_losses():
    first = _Direction(BURSTY, random.Random("7/down"))
    second = _Direction(BURSTY, random.Random("7/down"))
    assert [first.lose() for _ in range(1000)] == [second.lose() for _ in range(1000)]


@pytest.mark.e2e
async def test_join_duration_ends_the_process_on_time_under_burst_loss(tmp_path: Path):
    duration = float(os.environ.get("SALON_LOSSY_DURATION", "4"))
    async with run_daemon(tmp_path / "state") as live:
        host = await live.client("Host")
        await host.create_room("Lossy", room="lossy")
        await host.join("lossy")
        speaker = await live.client("Voice")
        await speaker.join("lossy")
        voice = RoomAudio(speaker, source=tone_frames(seconds=60.0), auto_unmute=True)
        speaking = asyncio.ensure_future(voice.run())
        await host.call("invite_to_speak", user=speaker.user)
        await speaker.call("accept_speak")
        async with lossy_relay(live.host, live.port, up=BURSTY, down=BURSTY, seed=5) as relay:
            relay_host, relay_port = relay.address
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "salon.client.cli",
                "join",
                "lossy",
                "--record",
                str(tmp_path / "out.wav"),
                "--duration",
                str(duration),
                "--quiet",
                "--no-input",
                "--server",
                f"{relay_host}:{relay_port}",
                "--fingerprint",
                live.fingerprint,
                "--guest-key-file",
                str(tmp_path / "ear.key"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            joined_at = None
            lines: list[str] = []
            try:
                assert proc.stdout is not None
                # Generous against a loaded machine; the bug this guards kept the process
                # for a minute after it said it had left.
                async with asyncio.timeout(60.0):
                    while joined_at is None:
                        line = (await proc.stdout.readline()).decode(errors="replace")
                        if not line:
                            break
                        lines.append(line)
                        if "joined lossy" in line:
                            joined_at = time.monotonic()
                assert joined_at is not None, "".join(lines)
                # Just before the deadline the path goes dead: the `leave` reply and the close
                # handshake are lost for good. The process must still end on its own, long
                # before the 15 s idle timeout would notice the dead path.
                await asyncio.sleep(max(0.0, duration - 0.3))
                relay.cut = True
                async with asyncio.timeout(8.0):
                    while line := (await proc.stdout.readline()).decode(errors="replace"):
                        lines.append(line)
                    await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                speaking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await speaking
            text = "".join(lines)
            assert proc.returncode == 0, text
            overrun = time.monotonic() - joined_at - duration
            assert "left after" in text, text
            assert relay.down.stats.dropped > 0 and relay.up.stats.dropped > 0
            record(
                "join_duration_under_burst_loss",
                duration=duration,
                seconds_past_deadline=round(overrun, 2),
                dropped_up=relay.up.stats.dropped,
                dropped_down=relay.down.stats.dropped,
            )


async def test_loss_reports_reach_the_speaker_who_switches_redundancy_on_and_off(tmp_path: Path):
    async with run_daemon(tmp_path / "state") as live:
        host = await live.client("Host")
        await host.create_room("Reports", room="reports")
        await host.join("reports")
        # A speaker of before the redundancy flow: per-packet RED (PROTOCOL.md 11.9).
        speaker = await live.client("Voice", capabilities=(msg.CAPABILITY_RED,))
        await speaker.join("reports")
        voice = RoomAudio(speaker, source=tone_frames(seconds=120.0), auto_unmute=True)
        await host.call("invite_to_speak", user=speaker.user)
        await speaker.call("accept_speak")
        tasks = [asyncio.ensure_future(voice.run())]
        lossy = Impairment(loss=0.10)
        async with lossy_relay(live.host, live.port, down=lossy, seed=11) as relay:
            ear = await SalonClient.connect(
                *relay.address,
                display_name="Ear",
                fingerprint=live.fingerprint,
                credentials={"guest_key": base64.b64encode(os.urandom(32)).decode()},
            )
            live.clients.append(ear)
            listening = RoomAudio(ear)  # before the join: it learns the keys from room_state
            await ear.join("reports")
            tasks.append(asyncio.ensure_future(listening.run()))
            try:
                await eventually(lambda: voice.sender is not None and voice.sender.redundancy == 2)
                report = voice.loss_reports[-1]
                assert report.reporters >= 1 and report.loss >= 0.03
                # The switch and the next 20 ms frame are separate events: wait for a RED frame
                # to actually go out rather than racing the sender's clock.
                await eventually(lambda: voice.sender is not None and voice.sender.stats.red > 0)
                red_before = listening.receiver.jitter_stats()
                relay.set_impairment(down=Impairment())
                await eventually(lambda: voice.sender is not None and voice.sender.redundancy == 0)
                assert voice.loss_reports[-1].loss < 0.005
                assert listening.reports_sent >= 2
                filled = sum(s.redundancy_filled for s in red_before.values())
                record(
                    "loss_reports_switch_redundancy",
                    loss_reports=len(voice.loss_reports),
                    reports_sent=listening.reports_sent,
                    gaps_filled_by_red=filled,
                    dropped_down=relay.down.stats.dropped,
                )
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def test_bad_receiver_reports_get_an_error_and_change_nothing(tmp_path: Path):
    async with run_daemon(tmp_path / "state") as live:
        ear = await live.client("Ear")
        await ear.create_room("Bad reports", room="bad")
        await ear.join("bad")

        def entry(**fields: Any) -> dict[str, Any]:
            return {"flow_id": 1, "expected": 50, "lost": 1, **fields}

        for reports, code in [
            ([entry(lost=51)], "invalid_value"),
            ([entry(late=60)], "invalid_value"),
            ([entry(expected=0)], "bad_message"),
            ([entry(expected=5000)], "bad_message"),
            ([entry(jitter_ms=-1)], "bad_message"),
            ([entry()] * 33, "bad_message"),
            ([entry(flow_id="x")], "bad_message"),
        ]:
            with pytest.raises(RequestError) as refused:
                await ear.call("receiver_report", reports=reports)
            assert refused.value.code == code, reports
        # A valid report about a flow that is not in the room is accepted and ignored; a second
        # one right after is refused.
        await ear.call("receiver_report", reports=[entry(flow_id=999)])
        with pytest.raises(RequestError) as refused:
            await ear.call("receiver_report", reports=[entry()])
        assert refused.value.code == "rate_limited"
        assert (await ear.call("ping")) == {}


class PlainListener:
    """A minimal listener of an older revision: no ``red`` capability, no receiver reports.

    It keeps each speaker's key from the room's events, opens every datagram with SRTP and
    decodes payload type 111 with Opus; anything else it counts and drops, as PROTOCOL.md 11.5
    lets a receiver that never declared ``red`` do.
    """

    def __init__(self, client: SalonClient) -> None:
        self.srtp = SrtpReceiver()
        self.decoder = OpusDecoder()
        self.plain: list[tuple[int, bytes]] = []
        """(sequence number, decoded PCM) of each payload type 111 packet, in arrival order."""
        self.dropped: list[tuple[int, int]] = []
        """(sequence number, payload type) of each packet it could not use."""
        client.add_listener(self._on_event)
        client.on_datagram = self._on_datagram

    def _on_event(self, event: Any) -> None:
        keys = []
        if isinstance(event, msg.RoomState):
            keys = list(event.room.media_keys)
        elif isinstance(event, msg.MediaKeyEvent):
            keys = [event.key]
        for key in keys:
            self.srtp.add(key.flow_id, key.ssrc, key_from_base64(key.key))

    def _on_datagram(self, datagram: bytes) -> None:
        try:
            _, packet = self.srtp.open(datagram)
        except SrtpError:
            return
        if packet.payload_type != 111:
            self.dropped.append((packet.sequence_number, packet.payload_type))
            return
        self.plain.append((packet.sequence_number, self.decoder.decode(packet.payload)))


async def test_a_listener_without_red_and_reports_hears_the_speaker(tmp_path: Path):
    """RED is on for a lossy listener; an older client joins: the speaker goes back to plain
    Opus at once, and that client decodes every packet after its first one (a 440 Hz tone),
    while the lossy listener keeps its loss covered by in-band FEC. When it leaves, RED is
    allowed again."""
    async with run_daemon(tmp_path / "state") as live:
        host = await live.client("Host")
        await host.create_room("Mixed", room="mixed")
        await host.join("mixed")
        speaker = await live.client("Voice", capabilities=(msg.CAPABILITY_RED,))
        await speaker.join("mixed")
        voice = RoomAudio(speaker, source=tone_frames(seconds=120.0), auto_unmute=True)
        await host.call("invite_to_speak", user=speaker.user)
        await speaker.call("accept_speak")
        tasks = [asyncio.ensure_future(voice.run())]
        async with lossy_relay(live.host, live.port, seed=13) as relay:
            ear = await SalonClient.connect(
                *relay.address,
                display_name="Ear",
                fingerprint=live.fingerprint,
                credentials={"guest_key": base64.b64encode(os.urandom(32)).decode()},
            )
            live.clients.append(ear)
            listening = RoomAudio(ear)
            await ear.join("mixed")
            relay.set_impairment(down=Impairment(loss=0.10))
            tasks.append(asyncio.ensure_future(listening.run()))
            try:
                await eventually(lambda: voice.sender is not None and voice.sender.stats.red > 0)
                assert voice.loss_reports[-1].red
                old = await live.client("Old", capabilities=())
                plain = PlainListener(old)
                await old.join("mixed")
                # The server tells the speaker at once, not at the next receiver report.
                await eventually(lambda: voice.sender is not None and voice.sender.redundancy == 0)
                assert not voice.loss_reports[-1].red
                await eventually(lambda: len(plain.plain) >= 150)
                first_plain = plain.plain[0][0]
                red_after = [
                    seq for seq, pt in plain.dropped if (seq - first_plain) & 0xFFFF < 0x8000
                ]
                assert red_after == [], plain.dropped
                assert {pt for _, pt in plain.dropped} <= {63}
                heard = np.frombuffer(b"".join(pcm for _, pcm in plain.plain[25:]), dtype="<i2")
                assert abs(dominant_frequencies(heard, 1)[0] - 440.0) < 5.0
                assert np.sqrt(np.mean(heard.astype(np.float64) ** 2)) > 0.2 * 32767 / 2**0.5
                # The lossy listener still reports; RED stays off while the old client is in.
                reports_before = len(voice.loss_reports)
                await eventually(lambda: len(voice.loss_reports) >= reports_before + 2)
                assert not any(r.red for r in voice.loss_reports[reports_before:])
                assert voice.sender is not None and voice.sender.redundancy == 0
                assert voice.sender.encoder.expected_loss > 0  # in-band FEC instead
                await old.call("leave")
                await eventually(lambda: voice.sender is not None and voice.sender.redundancy > 0)
                record(
                    "plain_listener_beside_red",
                    plain_packets=len(plain.plain),
                    red_packets_before_switch=len(plain.dropped),
                    dropped_down=relay.down.stats.dropped,
                )
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


class FlowBytes:
    """Datagrams and bytes a client receives, per flow id, counted before its RoomAudio sees
    them (wraps the ``on_datagram`` RoomAudio installed)."""

    def __init__(self, client: SalonClient) -> None:
        self.packets: Counter[int] = Counter()
        self.bytes: Counter[int] = Counter()
        deliver = client.on_datagram
        assert deliver is not None

        def counted(data: bytes) -> None:
            flow_id, _ = unpack_datagram(data)
            self.packets[flow_id] += 1
            self.bytes[flow_id] += len(data)
            deliver(data)

        client.on_datagram = counted


async def test_the_redundancy_flow_goes_only_to_the_lossy_listener(tmp_path: Path):
    """Three listeners of one speaker: a clean one, a lossy one (10% down), and a lossy one
    whose client does not declare ``red_flow``. Only the lossy one that declared it gets the
    speaker's redundancy flow, and fills gaps with it; the clean one's bytes stay what they were
    with no redundancy; the flow stops when the loss goes away (PROTOCOL.md 11.10)."""
    async with run_daemon(tmp_path / "state") as live:
        host = await live.client("Host")
        await host.create_room("Redundancy flow", room="rflow")
        await host.join("rflow")
        speaker = await live.client("Voice")
        await speaker.join("rflow")
        voice = RoomAudio(speaker, source=tone_frames(seconds=120.0), auto_unmute=True)
        await host.call("invite_to_speak", user=speaker.user)
        await speaker.call("accept_speak")
        tasks = [asyncio.ensure_future(voice.run())]
        clean_client = await live.client("Clean")
        clean = RoomAudio(clean_client)
        clean_bytes = FlowBytes(clean_client)
        await clean_client.join("rflow")
        tasks.append(asyncio.ensure_future(clean.run()))
        async with lossy_relay(live.host, live.port, seed=19) as relay:
            listeners = {}
            for name, capabilities in (
                ("Lossy", (msg.CAPABILITY_RED, msg.CAPABILITY_RED_FLOW)),
                ("Older", (msg.CAPABILITY_RED,)),
            ):
                client = await SalonClient.connect(
                    *relay.address,
                    display_name=name,
                    fingerprint=live.fingerprint,
                    credentials={"guest_key": base64.b64encode(os.urandom(32)).decode()},
                    capabilities=capabilities,
                )
                live.clients.append(client)
                audio = RoomAudio(client)
                listeners[name] = (audio, FlowBytes(client))
                await client.join("rflow")
                tasks.append(asyncio.ensure_future(audio.run()))
            lossy, lossy_bytes = listeners["Lossy"]
            older, older_bytes = listeners["Older"]
            try:
                await eventually(lambda: voice.sender is not None and voice.sender.stats.sent > 0)
                sender = voice.sender
                assert sender is not None
                assert sender.red_flow_id is not None  # the server gave it one
                flow_id, red_flow_id = sender.flow_id, sender.red_flow_id

                async def clean_bytes_per_frame(frames: int) -> float:
                    start_sent, start_bytes = sender.stats.sent, sum(clean_bytes.bytes.values())
                    await eventually(lambda: sender.stats.sent >= start_sent + frames)
                    got = sum(clean_bytes.bytes.values()) - start_bytes
                    return got / (sender.stats.sent - start_sent)

                before = await clean_bytes_per_frame(150)
                assert not sender.red_flow_on and sender.stats.red_flow_sent == 0
                relay.set_impairment(down=Impairment(loss=0.10))
                await eventually(lambda: sender.red_flow_on)
                assert not voice.loss_reports[-1].red  # never per-packet RED beside it
                await eventually(lambda: lossy.receiver.stats.red_flow_filled >= 10)
                during = await clean_bytes_per_frame(150)
                assert sender.red_flow_on
                # Only the lossy listener that declared it receives the flow, and uses it.
                assert lossy_bytes.packets[red_flow_id] > 0
                assert clean_bytes.packets[red_flow_id] == 0
                assert older_bytes.packets[red_flow_id] == 0
                assert older.receiver.stats.red_flow_received == 0
                assert set(clean_bytes.packets) == {flow_id}
                assert during <= 1.10 * before, (before, during)
                # Its primary flow stays plain Opus for everybody.
                assert sender.stats.red == 0
                filled = lossy.receiver.stats.red_flow_filled
                relay.set_impairment(down=Impairment())
                await eventually(lambda: not sender.red_flow_on)
                sent_at_stop = sender.stats.red_flow_sent
                # What was in flight has arrived after another 25 frames; then nothing more.
                mark = sender.stats.sent
                await eventually(lambda: sender.stats.sent >= mark + 25)
                received = lossy_bytes.packets[red_flow_id]
                mark = sender.stats.sent
                await eventually(lambda: sender.stats.sent >= mark + 50)
                assert lossy_bytes.packets[red_flow_id] == received
                assert sender.stats.red_flow_sent == sent_at_stop
                record(
                    "redundancy_flow_to_the_lossy_listener",
                    clean_bytes_per_frame_before=round(before, 1),
                    clean_bytes_per_frame_during=round(during, 1),
                    lossy_red_flow_packets=lossy_bytes.packets[red_flow_id],
                    lossy_red_flow_bytes=lossy_bytes.bytes[red_flow_id],
                    lossy_primary_bytes=lossy_bytes.bytes[flow_id],
                    gaps_filled=filled,
                    older_red_flow_packets=older_bytes.packets[red_flow_id],
                    dropped_down=relay.down.stats.dropped,
                )
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def test_the_redundancy_flow_repairs_bursts_longer_than_two_packets(tmp_path: Path):
    """A listener whose link loses 10% in bursts of mean length 3: the redundancy flow's far
    copy (frame N-4 beside frame N, PROTOCOL.md 11.10) fills frames whose packet and the next
    one were both lost, and the listener, having seen its flow lose pairs, waits the extra
    frames for it. Copies of N-1 and N-2 would die with a burst of three. When the listener
    stops reporting, the flow stops after REPORT_TTL with no other report to trigger it."""
    async with run_daemon(tmp_path / "state") as live:
        host = await live.client("Host")
        await host.create_room("Bursts", room="bursts")
        await host.join("bursts")
        speaker = await live.client(
            "Voice", capabilities=(msg.CAPABILITY_RED, msg.CAPABILITY_RED_FLOW)
        )
        await speaker.join("bursts")
        voice = RoomAudio(speaker, source=tone_frames(seconds=120.0), auto_unmute=True)
        await host.call("invite_to_speak", user=speaker.user)
        await speaker.call("accept_speak")
        tasks = [asyncio.ensure_future(voice.run())]
        down = Impairment(loss=0.10, burst_length=3.0)
        async with lossy_relay(live.host, live.port, down=down, seed=23) as relay:
            client = await SalonClient.connect(
                *relay.address,
                display_name="Bursty",
                fingerprint=live.fingerprint,
                credentials={"guest_key": base64.b64encode(os.urandom(32)).decode()},
                capabilities=(msg.CAPABILITY_RED, msg.CAPABILITY_RED_FLOW),
            )
            live.clients.append(client)
            listener = RoomAudio(client)
            await client.join("bursts")
            tasks.append(asyncio.ensure_future(listener.run()))
            try:
                await eventually(lambda: voice.sender is not None and voice.sender.red_flow_on)
                stats = listener.receiver.stats
                await eventually(lambda: stats.red_flow_far_filled >= 5)
                buffer = listener.receiver.jitter_stats()[speaker.user]
                # It waits for the far copy: one frame for the near copy, four for the far.
                assert buffer.target_delay >= 0.1 - 1e-9
                record(
                    "redundancy_flow_bursts",
                    far_filled=stats.red_flow_far_filled,
                    filled=stats.red_flow_filled,
                    lost=buffer.lost,
                    dropped_down=relay.down.stats.dropped,
                )
                # The listener stops reporting (its audio loop ends, its connection stays):
                # nobody else reports on the flow, yet once its last report is 5 s old the
                # server stops the flow and tells the speaker.
                tasks[1].cancel()
                await asyncio.gather(tasks[1], return_exceptions=True)
                await eventually(lambda: voice.sender is not None and not voice.sender.red_flow_on)
                assert not client.closed
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def test_the_speaker_s_bitrate_follows_loss_within_the_server_s_bounds(tmp_path: Path):
    bounds = (16000, 24000)
    async with run_daemon(
        tmp_path / "state", **{"limits.min_bitrate": bounds[0], "limits.max_bitrate": bounds[1]}
    ) as live:
        host = await live.client("Host")
        await host.create_room("Bitrate", room="bitrate")
        await host.join("bitrate")
        # Without a redundancy flow: a listener that gets one has its loss covered by it and
        # left out of `loss` (PROTOCOL.md 11.10), so it would not lower the bitrate.
        speaker = await live.client("Voice", capabilities=(msg.CAPABILITY_RED,))
        assert (speaker.limits["min_bitrate"], speaker.limits["max_bitrate"]) == bounds
        await speaker.join("bitrate")
        voice = RoomAudio(speaker, source=tone_frames(seconds=120.0), auto_unmute=True)
        assert voice.bitrate == 32000  # what it would send without bounds
        # The encoder's bitrate after each loss report, and the size of what it encodes.
        trace: list[tuple[float, int]] = []
        sizes: dict[int, list[int]] = {}
        speaker.add_listener(
            lambda event: (
                isinstance(event, msg.LossReport)
                and voice.sender is not None
                and trace.append((event.loss, voice.sender.encoder.bitrate))
            )
        )
        await host.call("invite_to_speak", user=speaker.user)
        await speaker.call("accept_speak")
        await eventually(lambda: voice.sender is not None)
        encoder = voice.sender.encoder  # type: ignore[union-attr]
        encode = encoder.encode

        def measured(pcm: bytes) -> bytes:
            payload = encode(pcm)
            sizes.setdefault(encoder.bitrate, []).append(len(payload))
            return payload

        encoder.encode = measured  # type: ignore[method-assign]
        assert encoder.bitrate == bounds[1]  # the preferred 32 kbit/s clipped at once
        tasks = [asyncio.ensure_future(voice.run())]
        # The path is made lossy once the listener is in: a handshake and hello through 30%
        # loss can take longer than the hello timeout on a loaded machine.
        async with lossy_relay(live.host, live.port, seed=17) as relay:
            ear = await SalonClient.connect(
                *relay.address,
                display_name="Ear",
                fingerprint=live.fingerprint,
                credentials={"guest_key": base64.b64encode(os.urandom(32)).decode()},
            )
            live.clients.append(ear)
            listening = RoomAudio(ear)
            await ear.join("bitrate")
            relay.set_impairment(down=Impairment(loss=0.30))
            tasks.append(asyncio.ensure_future(listening.run()))
            try:
                await eventually(lambda: encoder.bitrate == bounds[0], timeout=60.0)
                lowest = len(trace)
                relay.set_impairment(down=Impairment())
                await eventually(lambda: encoder.bitrate > bounds[0], timeout=60.0)
                rates = [rate for _, rate in trace]
                assert all(bounds[0] <= rate <= bounds[1] for rate in rates), trace
                assert rates[:lowest] == sorted(rates[:lowest], reverse=True), trace
                # The encoder really sends less at the lower bitrate (a steady tone).
                top, bottom = np.mean(sizes[bounds[1]]), np.mean(sizes[bounds[0]])
                assert bottom < 0.85 * top, (top, bottom)
                record(
                    "bitrate_follows_loss",
                    trace=trace,
                    mean_payload_at_max=round(float(top), 1),
                    mean_payload_at_min=round(float(bottom), 1),
                )
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


def test_netem_arguments_match_the_relay_s_impairments():
    assert netem_arguments(Impairment(loss=0.05)) == ["loss", "random", "5.0000%"]
    # Gilbert-Elliott: mean burst 2 leaves the bad state half the time; 5% of packets in it.
    assert netem_arguments(BURSTY) == ["loss", "gemodel", "2.6316%", "50.0000%"]
    assert netem_arguments(Impairment(jitter=0.040)) == ["delay", "20.0ms", "20.0ms"]
    assert netem_arguments(Impairment()) == ["loss", "0%"]


async def test_kernel_netem_loss_reaches_the_speaker_from_a_network_namespace(tmp_path: Path):
    """The listener's socket lives in a network namespace whose link to salond loses 5% in the
    kernel (netem), both ways: it hears the tone and its loss reaches the speaker."""
    reason = netem_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with netem_path(Impairment(loss=0.05)) as path:
        async with run_daemon(tmp_path / "state", **{"server.host": path.host_address}) as live:
            host = await live.client("Host")
            await host.create_room("Netem", room="netem")
            await host.join("netem")
            speaker = await live.client("Voice")
            await speaker.join("netem")
            voice = RoomAudio(speaker, source=tone_frames(seconds=60.0), auto_unmute=True)
            await host.call("invite_to_speak", user=speaker.user)
            await speaker.call("accept_speak")
            tasks = [asyncio.ensure_future(voice.run())]
            # The client's socket is made in the namespace (after an await: nothing else in
            # this process makes a socket meanwhile); salond's was made before, outside.
            with path.inside():
                ear = await SalonClient.connect(
                    live.host,
                    live.port,
                    display_name="Ear",
                    fingerprint=live.fingerprint,
                    credentials={"guest_key": base64.b64encode(os.urandom(32)).decode()},
                )
            live.clients.append(ear)
            probe = AudioProbe()
            listening = RoomAudio(ear)
            listening.on_frame_played = probe
            await ear.join("netem")
            tasks.append(asyncio.ensure_future(listening.run()))
            try:
                await eventually(
                    lambda: any(r.loss > 0 for r in voice.loss_reports) and probe.loud >= 100
                )
                # The listener's packets went through the veth link, the others' did not need to.
                assert path.packets_sent_to_namespace() > 0
                record(
                    "netem_namespace",
                    loss_reports=[r.loss for r in voice.loss_reports],
                    loud_frames=probe.loud,
                )
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
