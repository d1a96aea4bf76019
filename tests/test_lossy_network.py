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
from pathlib import Path
from typing import Any

import pytest

from salon.client.connection import RequestError, SalonClient
from salon.client.room_audio import RoomAudio
from tests.conftest import run_daemon
from tests.lossy_relay import Impairment, _Direction, lossy_relay
from tests.test_reconnect import eventually
from tests.test_reliability_support import record, tone_frames

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
        speaker = await live.client("Voice")
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
