"""Speech quality through salond on lossy paths: WB-PESQ, bytes on the wire, mouth-to-ear.

espeak-ng speaks two sentences; a reference client (``RoomAudio``, as ``salon join --play``)
speaks them in a room of a salond process, and another (as ``salon join --record``) records
what it plays. The listener reaches salond through ``tests/lossy_relay.py`` on loopback, which
impairs the listener's link in both directions (media down, acknowledgements and reports up):
clean, 2, 5 and 10% random loss, 5% loss in bursts (mean burst 2 packets), and 0-40 ms random
extra delay (jitter, which reorders). The speaker's link is clean. The first sentence lets the
loss reports reach the speaker (about 2 s); only the second is scored.

Per condition:
- WB-PESQ (ITU-T P.862.2, the ``pesq`` package) of the recording against the source, both at
  16 kHz, after aligning the recording by cross-correlation; next to it the codec alone: the
  same Opus encoder at the same bitrate, no network, decoded and scored the same way (the
  baseline of the same run);
- bytes per second the speaker's socket sends and the listener's link carries (the relay's
  count of what it forwards down, before loss), UDP payload, while the scored sentence plays;
- mouth-to-ear: for each 200 ms stretch of the scored speech, the time from its capture (handed
  to the encoder) to its playout (handed to the sound device), from the cross-correlation lag
  of that stretch; p50 and p95 over the stretches;
- what the speaker did: the redundancy it ended with (per-packet RED depth, or "flow" for its
  redundancy flow, PROTOCOL.md 11.10) and the loss the server reported to it.

With ``--netem`` the listener's link is a network namespace joined by a veth pair with the
kernel's netem qdisc on both ends (``tests/netem_path.py``) instead of the user-space relay:
same conditions (Gilbert-Elliott loss for the bursts), root, iproute2 and the ``sch_netem``
kernel module needed; the listener link's bytes are then what the host end sent into the
namespace after netem's losses (UDP payload).

    python bench/quality.py                 # every condition (about 2 minutes)
    python bench/quality.py --only clean,loss5
    python bench/quality.py --netem --only loss5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import start_server
from bench.mouth_to_ear import ByteCounter, count_sent
from salon.client.audiofile import read_audio
from salon.client.connection import SalonClient
from salon.client.room_audio import RoomAudio
from salon.daemon.wire import messages as msg
from salon.media import streams
from salon.media.codec import OpusDecoder, OpusEncoder
from tests.lossy_relay import Impairment, lossy_relay
from tests.netem_path import NetemPath, netem_path, netem_unavailable

RATE = 48000
FRAME = 960
PESQ_RATE = 16000
BITRATE = 32000
SPEAKER_CAPABILITIES: tuple[str, ...] = (msg.CAPABILITY_RED, msg.CAPABILITY_RED_FLOW)
"""What the speaker's ``hello`` declares; ``--per-packet-red`` leaves out the redundancy flow."""
RED_FLOW_SPAN = streams.RED_FLOW_SPAN
"""How far back the far copy of the redundancy flow packets reaches (``--red-flow-span``)."""
WARMUP_TEXT = "Good evening and welcome to the salon. Tonight we talk about networks."
SCORED_TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish."
)
SAMPLED = ("burst5",)
"""Conditions whose score depends on where a few long bursts fall in the speech: the full run
scores each over ``--samples`` loss patterns and reports the median and the spread."""
BASELINE_SETTINGS: dict[str, int] = {}
"""libopus' view of the codec-alone encoder's configuration, set once per run."""
CONDITIONS: dict[str, tuple[str, Impairment]] = {
    "clean": ("clean", Impairment()),
    "loss2": ("2% random loss", Impairment(loss=0.02)),
    "loss5": ("5% random loss", Impairment(loss=0.05)),
    "loss10": ("10% random loss", Impairment(loss=0.10)),
    "burst5": ("5% loss in bursts (mean 2)", Impairment(loss=0.05, burst_length=2.0)),
    "jitter40": ("0-40 ms random delay", Impairment(jitter=0.040)),
}


def speak(text: str, path: Path) -> npt.NDArray[np.int16]:
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    return read_audio(path)


def to_pesq_rate(samples: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    import soxr

    return np.asarray(
        soxr.resample(samples.astype(np.float32) / 32768.0, RATE, PESQ_RATE), dtype=np.float32
    )


def wb_pesq(reference: npt.NDArray[np.int16], degraded: npt.NDArray[np.int16]) -> float:
    from pesq import pesq

    return float(pesq(PESQ_RATE, to_pesq_rate(reference), to_pesq_rate(degraded), "wb"))


def spoken(
    warmup: npt.NDArray[np.int16], scored: npt.NDArray[np.int16]
) -> tuple[npt.NDArray[np.int16], int]:
    """What the speaker speaks: the warm-up sentence, half a second of silence, the scored
    sentence and a second of silence; and where the scored sentence starts in it."""
    gap = np.zeros(RATE // 2, dtype=np.int16)
    tail = np.zeros(RATE, dtype=np.int16)
    return np.concatenate([warmup, gap, scored, tail]), len(warmup) + len(gap)


def baseline_encoder() -> OpusEncoder:
    """The codec-alone encoder: built as ``RoomAudio`` builds a speaker's."""
    return OpusEncoder(bitrate=BITRATE)


def codec_alone(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """The samples through the speaker's Opus encoder and a decoder, nothing lost.

    The encoder is built as ``RoomAudio`` builds the speaker's (``OpusEncoder(bitrate=...)``:
    VOIP, 20 ms, in-band FEC and DTX on, libopus' default complexity, no expected loss) and is
    given the whole of what the speaker speaks: Opus adapts to the signal's history, so the
    scored sentence coded after the warm-up one is not the same as coded from a cold encoder
    (WB-PESQ 3.84 against 3.72 for this speech; BENCHMARKS.md). DTX frames decode as silence,
    as the listener plays them.
    """
    encoder, decoder = baseline_encoder(), OpusDecoder()
    out = []
    padded = np.concatenate([samples, np.zeros(-len(samples) % FRAME, dtype=np.int16)])
    for start in range(0, len(padded), FRAME):
        packet = encoder.encode(padded[start : start + FRAME].astype("<i2").tobytes())
        if encoder.is_dtx(packet):
            out.append(np.zeros(FRAME, dtype=np.int16))
        else:
            out.append(np.frombuffer(decoder.decode(packet), dtype="<i2"))
    return np.concatenate(out)[: len(samples)]


def scored_stretch(
    scored: npt.NDArray[np.int16], recording: npt.NDArray[np.int16]
) -> tuple[npt.NDArray[np.int16], int]:
    """The stretch of ``recording`` that holds the scored sentence, found by cross-correlation
    (so the codec's and the path's delays are both taken out), padded with silence if short."""
    lag = lag_of(scored, recording)
    heard = recording[lag : lag + len(scored)]
    if len(heard) < len(scored):
        heard = np.concatenate([heard, np.zeros(len(scored) - len(heard), dtype=np.int16)])
    return heard, lag


def baseline_study(warmup: npt.NDArray[np.int16], scored: npt.NDArray[np.int16]) -> None:
    """Print the codec-alone WB-PESQ of the scored sentence for several encoder histories."""
    source, start = spoken(warmup, scored)
    silence = np.zeros(start, dtype=np.int16)
    tail = np.zeros(RATE, dtype=np.int16)
    cases = {
        "cold encoder, scored sentence only (the baseline before 2026-12-03)": scored,
        "cold encoder, as much silence before it as the warm-up": np.concatenate(
            [silence, scored, tail]
        ),
        "cold encoder, the same frame phase as the speaker's": np.concatenate(
            [silence[: start % FRAME], scored, tail]
        ),
        "1 s of the warm-up sentence, then the gap": np.concatenate(
            [warmup[:RATE], silence[: RATE // 2], scored, tail]
        ),
        "what the speaker speaks: warm-up, gap, scored (the baseline now)": source,
    }
    for label, samples in cases.items():
        heard, _ = scored_stretch(scored, codec_alone(samples))
        print(f"{wb_pesq(scored, heard):.3f}  {label}")


def residual_study(packets: int = 1_000_000) -> None:
    """Print, for the relay's loss models, the share of frames no redundancy flow copy repairs.

    One QUIC packet per frame carries the frame and the redundancy flow packet sent with it
    (copies of frames N-1, N-2 and N-1-span), so a frame is lost for good when the packets of
    frames N, N+1, N+2 and N+1+span are all lost; a receiver that holds playout only two
    frames longer uses the near copies alone (lost when N, N+1 and N+2 are); copies of N-1 and
    N-2 alone were span 1.
    """
    import random as random_module

    from tests.lossy_relay import _Direction

    for name in ("loss5", "loss10", "burst5"):
        direction = _Direction(CONDITIONS[name][1], random_module.Random(f"residual/{name}"))
        lost = [direction.lose() for _ in range(packets)]
        frames = packets - 16
        share = sum(lost[:frames]) / frames
        near = sum(1 for n in range(frames) if lost[n] and lost[n + 1] and lost[n + 2])
        cells = [f"{name}: lost {share:.2%}, near copies only (span 1) {near / frames:.3%}"]
        for span in (2, 3, 5):
            far = sum(
                1
                for n in range(frames)
                if lost[n] and lost[n + 1] and lost[n + 2] and lost[n + 1 + span]
            )
            cells.append(f"span {span} {far / frames:.3%}")
        print("; ".join(cells))


def lag_of(reference: npt.NDArray[Any], recording: npt.NDArray[Any]) -> int:
    """Samples by which ``reference`` appears delayed in ``recording`` (FFT cross-correlation)."""
    size = 1 << int(np.ceil(np.log2(len(reference) + len(recording))))
    spectrum = np.fft.rfft(recording.astype(np.float64), size) * np.conj(
        np.fft.rfft(reference.astype(np.float64), size)
    )
    correlation = np.fft.irfft(spectrum, size)[: len(recording)]
    return int(np.argmax(correlation))


@dataclass
class Outcome:
    name: str
    label: str
    pesq: float
    codec_pesq: float
    speaker_bytes_per_s: float
    listener_bytes_per_s: float
    m2e_p50_ms: float
    m2e_p95_ms: float
    redundancy: int
    red_flow: bool
    """Whether the speaker was sending its redundancy flow at the end (PROTOCOL.md 11.10)."""
    reported_loss: float
    dropped: int
    forwarded: int
    filled_by_red: int
    fec_recovered: int
    unrepaired: int
    """Slots whose packet never came, filled by no copy nor the next packet's FEC (whole run)."""
    scored_lost: int
    """While the scored sentence was sent: slots whose packet never came on the speaker's flow
    (before repair, after the jitter buffer), ..."""
    scored_filled: int
    """... of those, filled by a copy (RED or the redundancy flow) ..."""
    scored_unrepaired: int
    """... and neither filled nor rebuilt from FEC (concealed)."""
    scored_playout: dict[str, int]
    """The listener's jitter buffer counters over the scored sentence."""
    scored_concealed: int
    """Concealment frames played while the scored sentence was sent: lost frames, late ones,
    frames inserted to raise the delay, and talkspurt ends before the next packet shows DTX."""
    concealed: int
    encoder_vs_baseline: dict[str, tuple[int, int]]
    """Settings in which the speaker's encoder (as the scored sentence ended) differs from the
    codec-alone baseline's, as libopus reports them: (speaker, baseline)."""
    shift: int = 0
    """What ``--seed`` (or the sample's number) added to the condition's seed."""
    samples: list[Outcome] = field(default_factory=list)
    """Every run of the condition, when it was run more than once (this is their median)."""


def median_of(samples: list[Outcome]) -> Outcome:
    """The run with the median WB-PESQ (the lower middle one of an even count), carrying all."""
    if len(samples) == 1:
        return samples[0]
    ordered = sorted(samples, key=lambda outcome: outcome.pesq)
    median = ordered[(len(ordered) - 1) // 2]
    return replace(median, samples=samples)


class ListenerLink(Protocol):
    """The impaired path between the listener and salond, and what it counted."""

    address: tuple[str, int]

    def socket_context(self) -> contextlib.AbstractContextManager[None]: ...
    def down_bytes(self) -> int: ...
    def down_packets(self) -> int: ...
    def dropped(self) -> int: ...


class RelayLink:
    """Through ``tests/lossy_relay.py`` on loopback; bytes counted before loss."""

    def __init__(self, relay: Any) -> None:
        self.relay = relay
        self.address = relay.address

    def socket_context(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def down_bytes(self) -> int:
        return int(self.relay.down.stats.bytes_forwarded)

    def down_packets(self) -> int:
        return int(self.relay.down.stats.forwarded)

    def dropped(self) -> int:
        return int(self.relay.down.stats.dropped + self.relay.up.stats.dropped)


class NetemLink:
    """Through a network namespace with netem; bytes counted after loss (UDP payload)."""

    def __init__(self, path: NetemPath, port: int) -> None:
        self.path = path
        self.address = (path.host_address, port)
        self._dropped_before = path.dropped()

    def socket_context(self) -> contextlib.AbstractContextManager[None]:
        return self.path.inside()

    def down_bytes(self) -> int:
        return self.path.udp_payload_sent_to_namespace()

    def down_packets(self) -> int:
        return self.path.packets_sent_to_namespace()

    def dropped(self) -> int:
        return self.path.dropped() - self._dropped_before


def repair_counts(audio: RoomAudio) -> dict[str, int]:
    """The listener's jitter buffers' counters so far, summed over its speakers."""
    buffers = list(audio.receiver.jitter_stats().values())
    counters = ("lost", "redundancy_filled", "fec_recovered", "concealed", "late", "expanded")
    counts = {name: sum(getattr(b, name) for b in buffers) for name in counters}
    counts["discarded"] = sum(b.discarded for b in buffers)
    return counts


def guest_key(name: str) -> str:
    digest = hashlib.sha256(f"bench-quality/{name}/{os.getpid()}".encode()).digest()
    return base64.b64encode(digest).decode()


async def run_condition(
    name: str,
    label: str,
    impairment: Impairment,
    server: Any,
    warmup: npt.NDArray[np.int16],
    scored: npt.NDArray[np.int16],
    codec_score: float,
    seed: int,
    netem: NetemPath | None = None,
) -> Outcome:
    host, port, fingerprint = server.host, server.port, server.fingerprint

    async def connect(who: str, at: tuple[str, int]) -> SalonClient:
        return await SalonClient.connect(
            *at,
            display_name=who,
            fingerprint=fingerprint,
            credentials={"guest_key": guest_key(f"{name}/{seed}/{who}")},
            **({"capabilities": SPEAKER_CAPABILITIES} if who == "Speaker" else {}),
        )

    @contextlib.asynccontextmanager
    async def listener_link() -> AsyncIterator[ListenerLink]:
        if netem is not None:
            netem.impair(impairment)
            yield NetemLink(netem, port)
            return
        async with lossy_relay(host, port, up=impairment, down=impairment, seed=seed) as relay:
            yield RelayLink(relay)

    source, scored_start = spoken(warmup, scored)
    frames = [
        np.concatenate([chunk, np.zeros(FRAME - len(chunk), dtype=np.int16)]).tobytes()
        for chunk in (source[i : i + FRAME] for i in range(0, len(source), FRAME))
    ]
    room = f"q-{name}-{seed}"
    async with listener_link() as link:
        owner = await connect("Host", (host, port))
        speaker = await connect("Speaker", (host, port))
        with link.socket_context():
            listener = await connect("Listener", link.address)
        clients = [owner, speaker, listener]
        try:
            await owner.create_room(f"quality {label}", room=room)
            await owner.join(room)
            invite = (await owner.call("create_invite", role="speaker"))["invite"]["token"]
            sent_at: dict[int, float] = {}
            played: list[tuple[float, bytes]] = []
            talk = RoomAudio(
                speaker,
                source=iter(frames),
                auto_unmute=True,
                bitrate=BITRATE,
                red_flow_span=RED_FLOW_SPAN,
            )
            hear = RoomAudio(listener)
            talk.on_frame_sent = lambda count, now: sent_at.setdefault(count - 1, now)
            hear.on_frame_played = lambda pcm, now: played.append((now, pcm))
            await listener.join(room)
            await speaker.join(room, invite=invite)
            up = ByteCounter()
            count_sent(speaker, up)
            stop = asyncio.Event()
            tasks = [
                asyncio.ensure_future(talk.run(stop=stop)),
                asyncio.ensure_future(hear.run(stop=stop)),
            ]
            loop = asyncio.get_running_loop()
            scored_frame = scored_start // FRAME
            while len(sent_at) <= scored_frame:
                await asyncio.sleep(0.02)
            up.counting = True
            repair_before = repair_counts(hear)
            down_before = link.down_bytes()
            started = loop.time()
            scored_frames = len(scored) // FRAME
            while len(sent_at) <= scored_frame + scored_frames and not talk.source_done:
                await asyncio.sleep(0.02)
            seconds = loop.time() - started
            assert talk.sender is not None
            speaker_settings = talk.sender.encoder.settings()
            up.counting = False
            repair_scored = {
                key: value - repair_before[key] for key, value in repair_counts(hear).items()
            }
            down_bytes = link.down_bytes() - down_before
            while not talk.source_done:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
            sender = talk.sender
            redundancy = sender.redundancy if sender is not None else 0
            red_flow = sender is not None and sender.red_flow_on
            reported = talk.loss_reports[-1].loss if talk.loss_reports else 0.0
            buffers = list(hear.receiver.jitter_stats().values())
        finally:
            for client in clients:
                await client.close()

    recording = np.frombuffer(b"".join(pcm for _, pcm in played), dtype="<i2")
    # Where the scored sentence is in the recording, then score exactly that stretch.
    heard, lag = scored_stretch(scored, recording)
    score = wb_pesq(scored, heard)
    # Mouth-to-ear per 200 ms stretch: capture time of the stretch vs its playout time.
    play_times = [now for now, _ in played]
    latencies = []
    stretch = RATE // 5
    for offset in range(0, len(scored) - stretch, stretch):
        piece = scored[offset : offset + stretch]
        if np.abs(piece.astype(np.int32)).max() < 1000:
            continue
        window_start = max(0, lag + offset - RATE // 10)
        window = recording[window_start : window_start + stretch + RATE // 5]
        if len(window) < stretch:
            continue
        where = window_start + lag_of(piece, window)
        source_index = scored_start + offset
        captured = sent_at.get(source_index // FRAME)
        frame = where // FRAME
        if captured is None or frame >= len(play_times):
            continue
        captured += (source_index % FRAME) / RATE
        latencies.append(play_times[frame] + (where % FRAME) / RATE - captured)
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else float("nan")
    p95 = (
        latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1000
        if latencies
        else float("nan")
    )
    return Outcome(
        name=name,
        label=label,
        pesq=round(score, 2),
        codec_pesq=round(codec_score, 2),
        speaker_bytes_per_s=round(up.bytes / seconds),
        listener_bytes_per_s=round(down_bytes / seconds),
        m2e_p50_ms=round(p50, 1),
        m2e_p95_ms=round(p95, 1),
        redundancy=redundancy,
        red_flow=red_flow,
        reported_loss=round(reported, 3),
        dropped=link.dropped(),
        forwarded=link.down_packets(),
        filled_by_red=sum(b.redundancy_filled for b in buffers),
        fec_recovered=sum(b.fec_recovered for b in buffers),
        unrepaired=sum(b.lost - b.fec_recovered for b in buffers),
        scored_lost=repair_scored["lost"] + repair_scored["redundancy_filled"],
        scored_filled=repair_scored["redundancy_filled"],
        scored_unrepaired=repair_scored["lost"] - repair_scored["fec_recovered"],
        scored_concealed=repair_scored["concealed"],
        scored_playout=repair_scored,
        concealed=sum(b.concealed for b in buffers),
        encoder_vs_baseline={
            key: (value, BASELINE_SETTINGS[key])
            for key, value in speaker_settings.items()
            if BASELINE_SETTINGS.get(key) != value
        },
    )


async def main_async(args: argparse.Namespace) -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="salon-quality-") as tmp:
        warmup = speak(WARMUP_TEXT, Path(tmp) / "warmup.wav")
        scored = speak(SCORED_TEXT, Path(tmp) / "scored.wav")
        # The baseline: what the speaker speaks through its encoder alone, scored on the same
        # stretch found the same way as in each recording.
        global BASELINE_SETTINGS
        BASELINE_SETTINGS = baseline_encoder().settings()
        codec_score = wb_pesq(
            scored, scored_stretch(scored, codec_alone(spoken(warmup, scored)[0]))[0]
        )
        print(f"codec alone ({BITRATE // 1000} kbit/s): WB-PESQ {codec_score:.2f}", file=sys.stderr)
        with contextlib.ExitStack() as stack:
            netem = stack.enter_context(netem_path()) if args.netem else None
            # Behind netem salond listens on the host end of the namespace's link (the speaker
            # and the host reach that address directly, not through netem).
            host = ("--host", netem.host_address) if netem is not None else ()
            server = start_server("salond", Path(tmp) / "state", args=host)
            stack.callback(server.stop)
            outcomes = []
            for name in args.only:
                label, impairment = CONDITIONS[name]
                # The seed follows the condition, not its place in --only: a condition run
                # alone meets the same loss pattern as in the full run (unless --seed moves it).
                index = list(CONDITIONS).index(name)
                if args.seed is not None:
                    shifts = [args.seed]
                elif name in SAMPLED:
                    shifts = list(range(args.samples))
                else:
                    shifts = [0]
                samples = []
                for shift in shifts:
                    outcome = await run_condition(
                        name,
                        label,
                        impairment,
                        server,
                        warmup,
                        scored,
                        codec_score,
                        seed=index + shift + 1,
                        netem=netem,
                    )
                    outcome.shift = shift
                    print(json.dumps(vars(outcome)), file=sys.stderr, flush=True)
                    samples.append(outcome)
                outcomes.append(median_of(samples))
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| listener's link | WB-PESQ through salond | codec alone | ratio | speaker B/s | "
        "listener link B/s | mouth-to-ear p50 / p95 ms | redundancy at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for o in outcomes:
        label, score = o.label, f"{o.pesq:.2f}"
        if o.samples:
            scores = sorted(sample.pesq for sample in o.samples)
            label = f"{o.label}, median of {len(scores)} patterns"
            score = f"{o.pesq:.2f} ({scores[0]:.2f}-{scores[-1]:.2f})"
            notes.append(
                f"{o.label}, per pattern (seed +k: WB-PESQ, mouth-to-ear p50/p95 ms, frames "
                "lost / filled by copies / concealed while the scored sentence was sent): "
                + "; ".join(
                    f"+{s.shift}: {s.pesq:.2f}, {s.m2e_p50_ms:.0f}/{s.m2e_p95_ms:.0f}, "
                    f"{s.scored_lost}/{s.scored_filled}/{s.scored_unrepaired}"
                    for s in o.samples
                )
            )
        lines.append(
            f"| {label} | {score} | {o.codec_pesq:.2f} | {o.pesq / o.codec_pesq:.2f} | "
            f"{o.speaker_bytes_per_s} | {o.listener_bytes_per_s} | "
            f"{o.m2e_p50_ms:.0f} / {o.m2e_p95_ms:.0f} | "
            f"{'flow' if o.red_flow else o.redundancy} |"
        )
    return "\n".join([*lines, "", *notes] if notes else lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        type=lambda text: [part for part in text.split(",") if part],
        default=list(CONDITIONS),
        help=f"comma-separated conditions among {', '.join(CONDITIONS)}",
    )
    parser.add_argument(
        "--netem",
        action="store_true",
        help="impair the listener's link with the kernel's netem in a network namespace "
        "(root, iproute2, sch_netem) instead of the user-space relay",
    )
    parser.add_argument(
        "--per-packet-red",
        action="store_true",
        help="the speaker does not declare red_flow: per-packet RED (PROTOCOL.md 11.9) "
        "instead of its redundancy flow (11.10)",
    )
    parser.add_argument(
        "--red-flow-span",
        type=int,
        default=streams.RED_FLOW_SPAN,
        help="how far back the far copy of a redundancy flow packet reaches (1: copies of "
        "N-1 and N-2 only, as sent before 2026-12-03)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="shift every condition's loss pattern and run each once (by default the "
        f"conditions {', '.join(SAMPLED)} run over --samples patterns, the others once)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=5,
        help=f"loss patterns for {', '.join(SAMPLED)} without --seed (default 5)",
    )
    parser.add_argument(
        "--residuals",
        action="store_true",
        help="only print the share of frames the redundancy flow's copies leave unrepaired "
        "under each loss model, for several spans (no network, a few seconds)",
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="only print the codec-alone score for several encoder histories (a few seconds)",
    )
    args = parser.parse_args(argv)
    if args.residuals:
        residual_study()
        return 0
    if args.baselines:
        with tempfile.TemporaryDirectory(prefix="salon-quality-") as tmp:
            baseline_study(
                speak(WARMUP_TEXT, Path(tmp) / "warmup.wav"),
                speak(SCORED_TEXT, Path(tmp) / "scored.wav"),
            )
        return 0
    unknown = set(args.only) - set(CONDITIONS)
    if unknown:
        parser.error(f"unknown conditions {sorted(unknown)}")
    if args.netem and (reason := netem_unavailable()) is not None:
        print(f"--netem: {reason}", file=sys.stderr)
        return 2
    global RED_FLOW_SPAN
    RED_FLOW_SPAN = args.red_flow_span
    if args.per_packet_red:
        global SPEAKER_CAPABILITIES
        SPEAKER_CAPABILITIES = (msg.CAPABILITY_RED,)
    outcomes = asyncio.run(main_async(args))
    print(table(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
