"""The web client in Debian's headless Chromium against a real salond, with real clients.

Audio is real: espeak-ng speech through Chromium's fake microphone or a ``salon`` process,
Opus via WebCodecs and opuslib, SRTP via WebCrypto and libsrtp, QUIC datagrams over loopback,
WebTransport on one side and ``salon/1`` on the other.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from salon.client.audiofile import read_audio, write_wav
from salon.client.connection import SalonClient
from salon.daemon.wire import messages as msg
from salon.daemon.wire.rtp import (
    AUDIO_LEVEL_EXTENSION_ID,
    FRAME_SAMPLES,
    OPUS_PAYLOAD_TYPE,
    HeaderExtension,
    RtpPacket,
    pack_audio_level,
)
from salon.media.codec import OpusEncoder
from salon.media.levels import audio_level
from salon.media.red import RED_PAYLOAD_TYPE, RedundantBlock, pack_red
from salon.media.srtp import SrtpReceiver, SrtpSender
from tests.audio_checks import align, speech
from tests.browser import Browser, require_chromium
from tests.conftest import SalondProcess, salon_cli, start_salond

pytestmark = pytest.mark.e2e
HOST_KEY = "d2ViLWNsaWVudC1ob3N0LWtleS0xMjM0NTY3ODk="
SPEECH = "The browser hears Salon speak. The quick brown fox jumps over the lazy dog."


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_web_salond(state_dir: Path, quic_port: int = 0, http_port: int = 0) -> SalondProcess:
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir.parent / "salond.toml"
    config.write_text(f"[server]\nport = {quic_port}\n[http]\nenabled = true\nport = {http_port}\n")
    return start_salond(state_dir, "--config", str(config), *(["--port", str(quic_port)]))


def web_base(daemon: SalondProcess) -> str:
    for line in daemon.lines:
        if "http on " in line:
            return line.split("http on ", 1)[1].strip().rstrip("/")
    raise AssertionError("salond printed no http address:\n" + daemon.log_text())


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake microphone's file: speech at 48 kHz (what Chromium reads without resampling).

    Chromium plays it from the start when the page opens the microphone, which it does when
    the user unmutes: the second of silence first lets the unmute complete before the speech.
    """
    folder = tmp_path_factory.mktemp("microphone")
    source = read_audio(speech(SPEECH, folder / "speech.wav"))
    path = folder / "microphone.wav"
    silence = np.zeros(48000 * 2, dtype=np.int16)
    write_wav(path, np.concatenate([silence, source, silence]))
    return path


@pytest.fixture(scope="module")
def browser(microphone: Path) -> Iterator[Browser]:
    require_chromium()
    chromium = Browser(microphone)
    yield chromium
    chromium.close()


@pytest.fixture
def web_salond(tmp_path: Path) -> Iterator[SalondProcess]:
    daemon = start_web_salond(tmp_path / "state")
    yield daemon
    assert daemon.stop() == 0, daemon.log_text()


async def host_client(daemon: SalondProcess) -> SalonClient:
    return await SalonClient.connect(
        daemon.host,
        daemon.port,
        display_name="Host",
        fingerprint=daemon.fingerprint,
        credentials={"guest_key": HOST_KEY},
    )


def cli(daemon: SalondProcess, tmp: Path, name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        salon_cli(
            daemon,
            *args,
            "--name",
            name,
            "--guest-key-file",
            str(tmp / f"{name}.key"),
            "--quiet",
            "--no-input",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


async def in_thread(function, *args):
    # Selenium blocks: the test's own salon client keeps running meanwhile.
    return await asyncio.to_thread(function, *args)


def participant(browser: Browser, name: str) -> dict | None:
    return browser.js(
        "const r = salonTest.state.room;"
        "return r && r.participants.find(p => p.display_name === arguments[0]) || null;",
        name,
    )


SRTP_SCRIPT = """
const [keyB64, packetsB64, frames, done] = arguments;
(async () => {
    const srtp = await import('/web/srtp.js');
    const key = srtp.base64ToBytes(keyB64);
    const sender = await srtp.SrtpSender.create(key);
    const out = [];
    for (const p of packetsB64) {
        out.push(srtp.bytesToBase64(await sender.protect(srtp.base64ToBytes(p))));
    }
    const receiver = await srtp.SrtpReceiver.create(key, 0x1234abcd);
    const back = await receiver.unprotect(srtp.base64ToBytes(out[0]));
    const replay = await receiver.unprotect(srtp.base64ToBytes(out[0]));
    const audio = await import('/web/audio.js');
    const levels = frames.map((f) => audio.audioLevel(Float32Array.from(f, (v) => v / 32768)));
    const rtp = audio.packetize(
        {seq: 1, timestamp: 960, ssrc: 0x1234abcd}, Uint8Array.of(0xf8, 0xff, 0xfe), 5, false);
    done({out, back: back && srtp.bytesToBase64(back), replay, levels,
          rtp: srtp.bytesToBase64(rtp)});
})().catch((error) => done({error: String(error)}));
"""


async def test_page_srtp_matches_the_protocol_vector_and_libsrtp(browser, web_salond):
    """The page's SRTP (WebCrypto) against PROTOCOL.md 11.7's vector and against libsrtp."""
    await in_thread(browser.open, web_base(web_salond) + "/")
    key = base64.b64decode("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHA==")
    extension = bytes.fromhex("1234abcdbede000110850000")
    clear = [bytes.fromhex("906f0001000003c0") + extension + bytes.fromhex("f8fffe")]
    # More packets as a speaker sends them: consecutive sequence numbers, other payloads.
    for seq in range(2, 40):
        clear.append(
            bytes.fromhex("906f")
            + seq.to_bytes(2, "big")
            + (seq * 960).to_bytes(4, "big")
            + extension
            + bytes(range(seq % 7, seq % 7 + 40))
        )
    # RFC 6464 levels of frames from silence to full scale, computed by the page and by Python.
    t = np.arange(960) / 48000
    level_frames = [np.zeros(960, dtype=np.int16)] + [
        (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        for amplitude in (3, 30, 300, 3000, 32767)
    ]
    result = await in_thread(
        browser.js_async,
        SRTP_SCRIPT,
        base64.b64encode(key).decode(),
        [base64.b64encode(p).decode() for p in clear],
        [frame.tolist() for frame in level_frames],
    )
    assert "error" not in result, result
    protected = [base64.b64decode(p) for p in result["out"]]
    vector = bytes.fromhex("53183c303cd7e9837af369e3b4cd4d5cc6f876")
    assert protected[0] == clear[0][:20] + vector  # the worked example of PROTOCOL.md 11.7
    python_sender = SrtpSender(key)
    assert protected == [python_sender.protect(p) for p in clear]  # byte for byte libsrtp's
    receiver = SrtpReceiver()
    receiver.add(5, 0x1234ABCD, key)
    assert [receiver.unprotect(5, p) for p in protected] == clear
    assert base64.b64decode(result["back"]) == clear[0]
    assert result["replay"] is None  # the page's replay window refuses a copy
    assert result["levels"] == [audio_level(frame) for frame in level_frames]
    # The page's RTP packet is 11.7's: one-byte extension block, the level as element 1, V set.
    assert base64.b64decode(result["rtp"]) == clear[0]


RED_SCRIPT = """
const [keyB64, ssrc, datagramsB64, done] = arguments;
(async () => {
    const srtp = await import('/web/srtp.js');
    const audio = await import('/web/audio.js');
    const engine = new audio.MediaEngine(() => {});
    engine.record(true);
    await engine.addKey({user: 'speaker', flow_id: 7, ssrc, profile: 'AEAD_AES_128_GCM',
                         key: keyB64, epoch: 0}, 'me');
    for (const d of datagramsB64) await engine.receive(srtp.base64ToBytes(d));
    const flow = engine.flows.get(7);
    await flow.decoder.flush();
    const rms = (f) => Math.sqrt(f.samples.reduce((s, v) => s + v * v, 0) / f.samples.length);
    done({at: engine.recorded.map((f) => f.at), rms: engine.recorded.map(rms),
          repaired: engine.framesRepaired, reports: engine.takeReports()});
})().catch((error) => done({error: String(error)}));
"""


async def test_page_decodes_red_and_fills_lost_packets_from_its_copies(browser, web_salond):
    """RED (PROTOCOL.md 11.9) built by media/red.py through the page's real receive path.

    The primary of every RED packet is decoded; a copy fills the slot of a packet that never
    came and of no other; a malformed RED payload is dropped; the page's receiver report
    counts the loss before repair.
    """
    await in_thread(browser.open, web_base(web_salond) + "/")
    key = bytes(range(1, 29))
    ssrc = 0x0BADCAFE
    encoder = OpusEncoder()
    t = np.arange(FRAME_SAMPLES) / 48000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    frames = [encoder.encode(tone) for _ in range(10)]
    base_seq, base_ts = 100, 960_000

    def rtp(index: int, payload_type: int, payload: bytes) -> bytes:
        return RtpPacket(
            payload_type=payload_type,
            sequence_number=base_seq + index,
            timestamp=base_ts + index * FRAME_SAMPLES,
            ssrc=ssrc,
            extensions=[HeaderExtension(AUDIO_LEVEL_EXTENSION_ID, pack_audio_level(True, 20))],
            payload=payload,
        ).serialize()

    def red(index: int, *distances: int) -> bytes:
        copies = [RedundantBlock(k * FRAME_SAMPLES, frames[index - k]) for k in distances]
        return rtp(index, RED_PAYLOAD_TYPE, pack_red(frames[index], copies))

    malformed = bytearray(pack_red(frames[8], [RedundantBlock(FRAME_SAMPLES, frames[7])]))
    malformed[0] = 0x80 | 0  # a block that is not Opus
    clear = [
        rtp(0, OPUS_PAYLOAD_TYPE, frames[0]),
        red(1, 1),  # 0 arrived: its copy is not decoded again
        # 2 and 3 lost
        red(4, 2, 1),  # fills 2 and 3
        # 5 lost, and no copy of it comes
        red(7, 1),  # fills 6
        rtp(8, RED_PAYLOAD_TYPE, bytes(malformed)),  # dropped
        rtp(9, OPUS_PAYLOAD_TYPE, frames[9]),
        rtp(2, OPUS_PAYLOAD_TYPE, frames[2]),  # too late: its slot was filled and played
    ]
    sender = SrtpSender(key)
    datagrams = [bytes([7]) + sender.protect(packet) for packet in clear]
    result = await in_thread(
        browser.js_async,
        RED_SCRIPT,
        base64.b64encode(key).decode(),
        ssrc,
        [base64.b64encode(d).decode() for d in datagrams],
    )
    assert "error" not in result, result
    decoded = [(at - base_ts) // FRAME_SAMPLES for at in result["at"]]
    assert decoded == [0, 1, 2, 3, 4, 6, 7, 9], result
    assert result["repaired"] == 3
    # Every frame, copies included, is the tone (a copy decoded from the wrong bytes or
    # concealment would not be), past the codec's first frame.
    assert all(level > 0.05 for level in result["rms"][1:]), result["rms"]
    # 100..109 expected; 100, 101, 104, 107, 109 and the late 102 arrived (the malformed 108
    # is not counted); RED's repair does not hide the loss from the speaker.
    [report] = result["reports"]
    assert {k: report[k] for k in ("flow_id", "expected", "lost", "late")} == {
        "flow_id": 7,
        "expected": 10,
        "lost": 4,
        "late": 1,
    }
    assert 0 <= report["jitter_ms"] <= 10000


BAD_FRAME_SCRIPT = """
const [keyB64, ssrc, batchesB64, done] = arguments;
(async () => {
    const srtp = await import('/web/srtp.js');
    const audio = await import('/web/audio.js');
    const engine = new audio.MediaEngine(() => {});
    engine.record(true);
    await engine.addKey({user: 'speaker', flow_id: 7, ssrc, profile: 'AEAD_AES_128_GCM',
                         key: keyB64, epoch: 0}, 'me');
    for (const batch of batchesB64) {
        for (const d of batch) await engine.receive(srtp.base64ToBytes(d));
        // Let the decoder answer (output or error) before the next batch arrives.
        const flow = engine.flows.get(7);
        if (flow.decoder) await flow.decoder.flush().catch(() => {});
        await new Promise((resolve) => setTimeout(resolve, 50));
    }
    done({at: engine.recorded.map((f) => f.at), resets: engine.decoderResets});
})().catch((error) => done({error: String(error)}));
"""


async def test_page_recovers_from_a_frame_its_decoder_refuses(browser, web_salond):
    """Any speaker can send bytes that are not Opus; WebCodecs closes a decoder for good on
    them. The page opens a new decoder, so the frames after the bad one are still heard.
    (Seen failing: with the old single decoder, nothing after the bad frame was decoded.)"""
    await in_thread(browser.open, web_base(web_salond) + "/")
    key = bytes(range(1, 29))
    ssrc = 0x0BADF00D
    encoder = OpusEncoder()
    t = np.arange(FRAME_SAMPLES) / 48000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    base_seq, base_ts = 500, 480_000
    sender = SrtpSender(key)

    def datagram(index: int, payload: bytes) -> str:
        packet = RtpPacket(
            payload_type=OPUS_PAYLOAD_TYPE,
            sequence_number=base_seq + index,
            timestamp=base_ts + index * FRAME_SAMPLES,
            ssrc=ssrc,
            extensions=[HeaderExtension(AUDIO_LEVEL_EXTENSION_ID, pack_audio_level(True, 20))],
            payload=payload,
        ).serialize()
        return base64.b64encode(bytes([7]) + sender.protect(packet)).decode()

    # TOC code 3 (arbitrary frame count) announcing zero frames: invalid in RFC 6716 3.2.5.
    not_opus = bytes([0x03, 0x00])
    batches = [
        [datagram(i, encoder.encode(tone)) for i in range(3)],
        [datagram(3, not_opus)],
        [datagram(i, encoder.encode(tone)) for i in range(4, 8)],
    ]
    result = await in_thread(
        browser.js_async, BAD_FRAME_SCRIPT, base64.b64encode(key).decode(), ssrc, batches
    )
    assert "error" not in result, result
    decoded = [(at - base_ts) // FRAME_SAMPLES for at in result["at"]]
    assert result["resets"] == 1, result
    assert decoded[:3] == [0, 1, 2], decoded
    assert decoded[-4:] == [4, 5, 6, 7], decoded


CHUNK = 24000  # 0.5 s
RATE = 48000
SEARCH = 12000  # how far a chunk may have moved from the global alignment (jitter buffers)


def chunks_found(source: np.ndarray, heard: np.ndarray) -> float:
    """Share of the source's voiced half-second chunks found in ``heard`` nearly intact.

    A single alignment over the whole recording punishes every jitter-buffer adjustment (20 ms
    of delay added or removed shifts everything after it), which a loaded machine makes
    frequent; each chunk is therefore looked for near the global alignment on its own. The
    speech may be in the recording more than once (a looping microphone) and cut at its end:
    the best of the three strongest alignments counts.
    """
    a_all = source.astype(np.float64)
    b_all = heard.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(a_all) + len(b_all))))
    xcorr = np.fft.irfft(np.fft.rfft(b_all, n) * np.conj(np.fft.rfft(a_all, n)), n)[: len(b_all)]
    best = 0.0
    for _ in range(3):
        lag = int(np.argmax(xcorr))
        best = max(best, _share_at(a_all, b_all, lag))
        xcorr[max(0, lag - RATE) : lag + RATE] = -np.inf
    return best


def _share_at(a_all: np.ndarray, b_all: np.ndarray, lag: int) -> float:
    found = voiced = 0
    for start in range(0, len(a_all) - CHUNK + 1, CHUNK):
        a = a_all[start : start + CHUNK]
        if np.sqrt(np.mean(a**2)) < 300:  # silence between words
            continue
        voiced += 1
        low = max(0, lag + start - SEARCH)
        b = b_all[low : lag + start + CHUNK + SEARCH]
        if len(b) < CHUNK:
            continue
        n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
        xcorr = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)[
            : len(b) - CHUNK + 1
        ]
        offset = int(np.argmax(xcorr))
        window = b[offset : offset + CHUNK]
        score = xcorr[offset] / (np.sqrt((a**2).sum() * (window**2).sum()) or 1.0)
        found += score > 0.6
    return found / max(voiced, 1)


def assert_heard(source: np.ndarray, heard: np.ndarray, control: np.ndarray) -> None:
    # Opus keeps speech's waveform closely: most chunks are found (0.9-1.0 measured on an idle
    # machine, down to 0.67 at a load of 12 on 2 cores, when the fake microphone or a jitter
    # buffer glitches); other speech is found nowhere (0.0), which the control shows.
    share = chunks_found(source, heard)
    assert share > 0.5, (share, align(source, heard))
    assert chunks_found(control, heard) < 0.2


# Keeps the outcome of every receiver_report the page sends (the page itself ignores them).
WATCH_REPORTS = """
const connection = salonTest.state.connection;
const request = connection.request.bind(connection);
window.reportOutcomes = [];
connection.request = (type, fields) => {
    const answer = request(type, fields);
    if (type === 'receiver_report') answer.then(
        () => reportOutcomes.push({reports: fields.reports}),
        (error) => reportOutcomes.push({error: String(error), reports: fields.reports}));
    return answer;
};
"""
REPORTS_SEEN = "return window.reportOutcomes.length ? window.reportOutcomes : null;"


async def test_browser_listener_hears_a_python_speaker(browser, web_salond, tmp_path):
    source_path = speech(SPEECH, tmp_path / "speech.wav")
    host = await host_client(web_salond)
    try:
        await host.create_room("Web listens", room="web-listen")
        await host.join("web-listen")
        invite = (await host.call("create_invite", role="speaker"))["invite"]["token"]
        await in_thread(browser.open, web_base(web_salond) + "/r/web-listen?name=Browser")
        await host.wait_for_event(
            msg.ParticipantJoined,
            timeout=30,
            where=lambda e: e.participant.display_name == "Browser",
        )
        await in_thread(browser.js, "salonTest.recordStart()")
        await in_thread(browser.js, WATCH_REPORTS)
        speaker = cli(
            web_salond,
            tmp_path,
            "Speaker",
            "join",
            "web-listen",
            f"--invite={invite}",
            "--play",
            str(source_path),
        )
        await in_thread(finish, speaker)
        await asyncio.sleep(0.5)  # the last frames leave the page's jitter buffer
        heard = await in_thread(browser.take_recording)
        # The page reported what it heard of the speaker (PROTOCOL.md 11.9) and salond took it.
        outcomes = await in_thread(
            browser.wait, "a receiver report answered", lambda: browser.js(REPORTS_SEEN)
        )
    finally:
        await host.close()
    assert all("error" not in o for o in outcomes), outcomes
    assert all(
        r["expected"] >= 1 and 0 <= r["lost"] <= r["expected"]
        for o in outcomes
        for r in o["reports"]
    )
    other = read_audio(speech("Something else entirely, said at another pace.", tmp_path / "o.wav"))
    assert_heard(read_audio(source_path), heard, other)


async def test_python_listener_hears_the_browser_speaking(
    browser, web_salond, microphone, tmp_path
):
    host = await host_client(web_salond)
    try:
        await host.create_room("Web speaks", room="web-speak")
        await host.join("web-speak")
        invite = (await host.call("create_invite", role="speaker"))["invite"]["token"]
        listener = cli(
            web_salond,
            tmp_path,
            "Listener",
            "join",
            "web-speak",
            "--record",
            str(tmp_path / "heard.wav"),
            "--duration",
            "14",
        )
        await host.wait_for_event(
            msg.ParticipantJoined,
            timeout=30,
            where=lambda e: e.participant.display_name == "Listener",
        )
        await in_thread(
            browser.open, web_base(web_salond) + f"/r/web-speak?name=Talker&invite={invite}"
        )
        await in_thread(browser.wait, "the unmute button", lambda: browser.has_button("Unmute"))
        await in_thread(browser.click_button, "Unmute")
        await host.wait_for_event(
            msg.ParticipantUpdated,
            timeout=30,
            where=lambda e: e.participant.display_name == "Talker" and not e.participant.muted,
        )
        await in_thread(finish, listener)
        sent = await in_thread(browser.js, "return salonTest.state.media.framesSent")
    finally:
        await host.close()

    assert sent > 100
    played = read_audio(microphone)
    voiced = np.flatnonzero(played)
    other = read_audio(speech("Something else entirely, said at another pace.", tmp_path / "o.wav"))
    assert_heard(played[voiced[0] : voiced[-1] + 1], read_audio(tmp_path / "heard.wav"), other)


async def test_browser_host_approves_a_knock_and_mutes_the_speaker(browser, web_salond, tmp_path):
    source = read_audio(speech(SPEECH, tmp_path / "speech.wav"))
    write_wav(tmp_path / "long.wav", np.concatenate([source] * 4))  # still talking when muted
    host = await host_client(web_salond)
    knocker = None
    try:
        await host.create_room("Web hosts", room="web-host", policy="approval")
        await host.join("web-host")
        invite = (await host.call("create_invite", role="listener"))["invite"]["token"]
        await in_thread(
            browser.open, web_base(web_salond) + f"/r/web-host?name=Mod&invite={invite}"
        )
        joined = await host.wait_for_event(
            msg.ParticipantJoined, timeout=30, where=lambda e: e.participant.display_name == "Mod"
        )
        await host.call("promote", user=joined.participant.user)
        knocker = cli(
            web_salond,
            tmp_path,
            "Knocker",
            "join",
            "web-host",
            "--play",
            str(tmp_path / "long.wav"),
        )
        # The knock with the requester's profile, then the host's keyboard.
        await in_thread(browser.wait, "the knock", lambda: browser.has_button("Approve Knocker"))
        detail = await in_thread(
            browser.js, "return document.querySelector('#knocks .detail').textContent"
        )
        assert "user guest-" in detail
        await in_thread(browser.click_button, "Approve Knocker")
        resolved = await host.wait_for_event(msg.KnockResolved, timeout=30)
        assert resolved.outcome == "approved" and resolved.by == joined.participant.user
        # The knocker raises its hand (salon join --play): invite it, it accepts and talks.
        await in_thread(
            browser.wait, "the raised hand", lambda: browser.has_button("Invite Knocker to speak")
        )
        await in_thread(browser.click_button, "Invite Knocker to speak")
        await in_thread(
            browser.wait,
            "the knocker on stage",
            lambda: (participant(browser, "Knocker") or {}).get("role") == "speaker",
        )
        await in_thread(browser.wait, "the mute button", lambda: browser.has_button("Mute Knocker"))
        await in_thread(browser.click_button, "Mute Knocker")
        muted = await host.wait_for_event(
            msg.ParticipantUpdated,
            timeout=30,
            where=lambda e: (
                e.participant.display_name == "Knocker" and e.participant.muted_by_moderator
            ),
        )
        assert muted.participant.muted and muted.participant.role == "speaker"
        await in_thread(
            browser.wait,
            "the mute shown",
            lambda: (participant(browser, "Knocker") or {}).get("muted_by_moderator"),
        )
    finally:
        if knocker is not None:
            knocker.terminate()
            knocker.communicate(timeout=30)
        await host.close()


async def test_page_reconnects_by_itself_after_salond_restarts(browser, tmp_path):
    quic_port, http_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    daemon = start_web_salond(tmp_path / "state", quic_port, http_port)
    try:
        host = await host_client(daemon)
        await host.create_room("Survives restarts", room="web-again", persistent=True)
        await host.close()
        await in_thread(browser.open, web_base(daemon) + "/r/web-again?name=Stayer")
        await in_thread(
            browser.wait, "the room", lambda: participant(browser, "Stayer") is not None
        )
        assert daemon.stop() == 0
        await in_thread(browser.wait, "the outage", lambda: "connected as" not in browser.status())
        daemon = start_web_salond(tmp_path / "state", quic_port, http_port)
        await in_thread(
            browser.wait,
            "a new session",
            lambda: (
                browser.js("return salonTest.state.connects") >= 2
                and "connected as" in browser.status()
            ),
            60,
        )
        # Back in the room as well, without anyone touching the page.
        await in_thread(
            browser.wait, "the room again", lambda: participant(browser, "Stayer") is not None
        )
    finally:
        daemon.stop()
