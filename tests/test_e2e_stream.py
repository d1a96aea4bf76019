"""Stream mode end to end: salond, nginx as a caching front, clients in their own processes.

One combined scenario (the machine has two cores): in an approval room, a speaker, three
real-time listeners and ten listeners placed in stream mode past ``realtime_listeners = 3``,
all `salon join` processes; nginx from Debian's package, started here with conf/nginx-stream.conf
(its own ports and paths), in front of salond's HTTP endpoint. The test process is the host,
a stream listener that is later banned, and someone knocking who is never let in.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urljoin

import aiohttp
import numpy as np
import pytest

from salon.client.audiofile import read_audio
from salon.client.connection import SalonClient
from salon.daemon.admin.client import AdminClient
from salon.daemon.wire import messages as msg
from tests.audio_checks import RATE, median_envelope, piecewise, speech
from tests.conftest import SalondProcess, salon_cli, start_salond

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HOST_KEY = "aG9zdC1rZXktZm9yLWUyZS10ZXN0cy0xMjM0NTY="
HTTP_RE = re.compile(r"http on http://[^:]+:(\d+)/")
UNIX_TIME_RE = re.compile(r"(speaking|recording to \S+) from unix time ([0-9.]+)")
STREAM_LISTENERS = 10
REALTIME_LISTENERS = 3
LISTENERS_PER_PROCESS = 3
WAIT = 120.0
"""Upper bound of a wait for an event (Chromium playing, a stream event, a speaking change):
it only stops a hang; on two cores under load 9-17 this test takes up to ~190 s."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_nginx(tmp: Path, origin: int, port: int) -> subprocess.Popen[bytes]:
    """Debian's nginx with the example configuration, on its own port, paths and logs."""
    text = (REPO / "conf" / "nginx-stream.conf").read_text()
    for old, new in [
        ("/var/cache/nginx/salon", str(tmp / "cache")),
        ("server 127.0.0.1:8460;", f"server 127.0.0.1:{origin};"),
        ("listen 8080;", f"listen 127.0.0.1:{port};"),
        (
            "\nhttp {",
            "\nhttp {\n"
            "    log_format cache '$upstream_cache_status $status $request_uri';\n"
            f"    access_log {tmp}/access.log cache;\n"
            + "".join(
                f"    {kind}_temp_path {tmp}/{kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            ),
        ),
    ]:
        assert old in text, f"conf/nginx-stream.conf no longer has {old!r}"
        text = text.replace(old, new, 1)
    for folder in ("cache", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    config = tmp / "nginx.conf"
    config.write_text(text)
    main = f"daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;"
    if os.geteuid() == 0:
        main += " user root;"  # workers must reach the test's private temporary directory
    proc = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(config), "-g", main],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start: " + (tmp / "error.log").read_text(errors="replace"))


class Cli:
    """A `salon join` process whose output goes to a file the test reads as it grows."""

    def __init__(self, daemon: SalondProcess, tmp: Path, name: str, *args: str) -> None:
        self.name = name
        self.log = tmp / f"{name}.log"
        self.recording = tmp / f"{name}.wav"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                salon_cli(
                    daemon,
                    "join",
                    *args,
                    "--name",
                    name,
                    "--guest-key-file",
                    str(tmp / f"{name}.key"),
                    "--quiet",
                    "--no-input",
                    "--record",
                    str(self.recording),
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_output(self, text: str, count: int = 1, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.output().count(text) < count:
            if self.proc.poll() is not None or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.name}: no {text!r} (x{count}):\n{self.output()}")
            await asyncio.sleep(0.1)

    def unix_time(self, what: str) -> float:
        for kind, value in UNIX_TIME_RE.findall(self.output()):
            if kind.startswith(what):
                return float(value)
        raise AssertionError(f"{self.name} printed no {what} time:\n{self.output()}")


class Member(Cli):
    """One of several stream listeners sharing a process (tests/stream_audience.py)."""

    def __init__(self, proc: subprocess.Popen[bytes], tmp: Path, name: str) -> None:
        self.name = name
        self.log = tmp / f"{name}.log"
        self.recording = tmp / f"{name}.wav"
        self.proc = proc

    def output(self) -> str:
        return super().output() if self.log.exists() else ""  # the process is starting


def start_audience(daemon: SalondProcess, tmp: Path, names: list[str], *args: str) -> list[Cli]:
    """`salon join` for each of ``names``, all in one process: each listener still has its own
    connection, stream player and HTTP session, and fetches through nginx on its own."""
    join = salon_cli(
        daemon,
        "join",
        *args,
        "--name",
        "{name}",
        "--guest-key-file",
        str(tmp / "{name}.key"),
        "--quiet",
        "--no-input",
        "--record",
        str(tmp / "{name}.wav"),
    )[3:]  # without "python -m salon.client.cli"
    with (tmp / f"audience-{names[0]}.err").open("w") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.stream_audience", str(tmp), *names, "--", *join],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    return [Member(proc, tmp, name) for name in names]


async def connect(daemon: SalondProcess, name: str, key: str | None = None) -> SalonClient:
    credentials = {"guest_key": key} if key else None
    return await SalonClient.connect(
        daemon.host,
        daemon.port,
        display_name=name,
        fingerprint=daemon.fingerprint,
        credentials=credentials,
    )


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as response:
        return response.status, await response.read()


def heard_around(cli: Cli, at: float, seconds: float) -> tuple[np.ndarray, int]:
    """What ``cli`` recorded from one second before unix time ``at``, for ``seconds``, and the
    offset of that excerpt in the recording: the correlations then search a few seconds, not
    the minutes a listener recorded (on two loaded cores that search took tens of seconds)."""
    start = max(0, int((at - 1.0 - cli.unix_time("recording")) * RATE))
    return read_audio(cli.recording)[start : start + int(seconds * RATE)], start


def playlist_entries(text: str) -> tuple[str, list[str]]:
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
    assert init is not None, text
    return init.group(1), [line for line in text.splitlines() if ".m4s?" in line]


async def play_in_chromium(page: str) -> float:
    """Open the player page in headless Chromium; return the media time it reached."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"salon-chromium-{os.getpid()}"
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=service)
    try:
        await asyncio.to_thread(driver.get, page)
        button = await asyncio.to_thread(driver.find_element, By.ID, "play")
        await asyncio.to_thread(button.click)
        deadline = asyncio.get_running_loop().time() + WAIT
        position = 0.0
        while asyncio.get_running_loop().time() < deadline:
            state = await asyncio.to_thread(
                driver.execute_script,
                "const p = document.getElementById('player');"
                "return [p.currentTime, document.getElementById('state').textContent];",
            )
            position, text = float(state[0]), str(state[1])
            assert not text.startswith("error"), text
            if position > 2.0:
                break
            await asyncio.sleep(0.25)
        return position
    finally:
        await asyncio.to_thread(driver.quit)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.timeout(420)  # 60-190 s measured alone on two cores under load 9-17
async def test_stream_mode_through_nginx(tmp_path):
    source_path = speech(
        "Salon streams the whole room to a large audience through any cache. "
        "The quick brown fox jumps over the lazy dog.",
        tmp_path / "speech.wav",
    )
    climb_path = speech(
        "Hello from the audience I came up from the stream to say that it works",
        tmp_path / "climb.wav",
    )
    nginx_port = free_port()
    config = tmp_path / "salond.toml"
    config.write_text(
        '[http]\nenabled = true\nhost = "127.0.0.1"\nport = 0\n'
        f"[stream]\nenabled = true\nrealtime_listeners = {REALTIME_LISTENERS}\n"
        f'public_url = "http://127.0.0.1:{nginx_port}"\n'
    )
    daemon = start_salond(tmp_path / "state", "-c", str(config))
    processes: list[Cli] = []
    nginx = None
    clients: list[SalonClient] = []
    try:
        origin = int(HTTP_RE.search(daemon.log_text()).group(1))  # type: ignore[union-attr]
        nginx = start_nginx(tmp_path / "nginx", origin, nginx_port)
        host = await connect(daemon, "Host", HOST_KEY)
        clients.append(host)
        await host.create_room("Big room", room="big", policy="approval")
        await host.join("big")
        listen_invite = (await host.call("create_invite", role="listener"))["invite"]["token"]
        speak_invite = (await host.call("create_invite", role="speaker"))["invite"]["token"]

        # Three real-time listeners fill the room's real-time capacity ...
        realtime = [
            Cli(daemon, tmp_path, f"Realtime{i}", "big", f"--invite={listen_invite}")
            for i in range(REALTIME_LISTENERS)
        ]
        processes += realtime
        for cli in realtime:
            await cli.wait_output("joined big")
        # ... so the next ten are placed in stream mode; one of them will come on stage.
        # Nine of them in three processes of three (fewer processes for two loaded cores).
        streamers = [
            member
            for first in range(0, STREAM_LISTENERS - 1, LISTENERS_PER_PROCESS)
            for member in start_audience(
                daemon,
                tmp_path,
                [
                    f"Stream{i}"
                    for i in range(first, min(first + LISTENERS_PER_PROCESS, STREAM_LISTENERS - 1))
                ],
                "big",
                f"--invite={listen_invite}",
            )
        ]
        climber = Cli(
            daemon,
            tmp_path,
            "Climber",
            "big",
            f"--invite={listen_invite}",
            "--raise-hand",
            "--play",
            str(climb_path),
            "--duration",  # stays once its phrase is said, until the room closes
            "300",
        )
        streamers.append(climber)
        processes += streamers
        for cli in streamers:
            await cli.wait_output("stream mode")
        for cli in realtime:
            assert "stream mode" not in cli.output()

        # Someone knocking, never admitted, and a stream listener the host will ban.
        outsider = await connect(daemon, "Outsider")
        clients.append(outsider)
        assert (await outsider.join("big"))["status"] == "knocking"
        watcher = await connect(daemon, "Watcher")
        clients.append(watcher)
        await watcher.join("big", listen_invite)
        stream_event = await watcher.wait_for_event(msg.Stream, timeout=WAIT)
        playlist_url = stream_event.playlist
        assert playlist_url.startswith(f"http://127.0.0.1:{nginx_port}/stream/big/live.m3u8?t=")

        speaker = Cli(
            daemon,
            tmp_path,
            "Speaker",
            "big",
            f"--invite={speak_invite}",
            "--play",
            str(source_path),
        )
        processes.append(speaker)
        await speaker.wait_output("speaking from unix time")
        # The speech lasts about 7 s; the stream is a few seconds behind.
        await asyncio.to_thread(speaker.proc.wait, 60)
        assert speaker.proc.returncode == 0, speaker.output()

        # A stream listener raises a hand (it did on entry), is invited, speaks in real time.
        admin = await AdminClient.connect(daemon.state_dir / "admin.sock")
        try:
            detail = await admin.room("big")
        finally:
            await admin.close()
        (climber_user,) = [p.user for p in detail.participants if p.display_name == "Climber"]
        await asyncio.sleep(4)  # the stream listeners play the end of the speech
        await host.call("invite_to_speak", user=climber_user)
        await climber.wait_output("real time")
        await climber.wait_output("speaking from unix time")
        await host.wait_for_event(
            msg.Speaking, timeout=WAIT, where=lambda e: climber_user in [s.user for s in e.speakers]
        )
        await host.wait_for_event(
            msg.Speaking,
            timeout=WAIT,
            where=lambda e: climber_user not in [s.user for s in e.speakers],
        )
        await asyncio.sleep(1.0)  # the phrase has no pause: its end has reached everyone
        # Moved back to the audience, it returns to the stream.
        await host.call("move_to_audience", user=climber_user)
        await climber.wait_output("stream mode", count=2)

        async with aiohttp.ClientSession() as http:
            # The stream through nginx: a playlist, its init section and segments that ffprobe
            # reads as AAC.
            status, body = await fetch(http, playlist_url)
            assert status == 200, body
            init_uri, segment_uris = playlist_entries(body.decode())
            assert segment_uris, body
            status, init = await fetch(http, urljoin(playlist_url, init_uri))
            assert status == 200
            status, segment = await fetch(http, urljoin(playlist_url, segment_uris[-1]))
            assert status == 200
            probe_file = tmp_path / "probe.mp4"
            probe_file.write_bytes(init + segment)
            probe = json.loads(
                subprocess.run(
                    [
                        "ffprobe",
                        "-v",
                        "error",
                        "-print_format",
                        "json",
                        "-show_streams",
                        "-count_frames",
                        str(probe_file),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            stream = probe["streams"][0]
            assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == (
                "aac",
                "48000",
                1,
            ), probe
            # Decoded whole: about one second of 1024-sample AAC frames.
            assert 0.5 < int(stream["nb_read_frames"]) * 1024 / 48000 < 2.5, probe

            # It plays in headless Chromium (the player page with hls.js).
            page = f"http://127.0.0.1:{origin}/stream-player/#{quote(playlist_url, safe='')}"
            assert await play_in_chromium(page) > 2.0

            # Not admitted: 403 for the playlist and the segments, whatever is tried.
            base = f"http://127.0.0.1:{nginx_port}/stream/big/"
            forged = f"{outsider.session}.{'A' * 22}"
            # A token made up for a member's session: only the signature can refuse it.
            forged_member = f"{watcher.session}.{'A' * 22}"
            epoch = init_uri.split("/")[0]
            for url in (
                base + "live.m3u8",
                base + f"live.m3u8?t={forged}",
                base + f"live.m3u8?t={forged_member}",
                base + f"{epoch}/init.mp4",
                base + f"{epoch}/init.mp4?s={'B' * 22}",
                base + f"{epoch}/0.m4s?s={'C' * 22}",
            ):
                assert (await fetch(http, url))[0] == 403, url

            # Banned: the very next playlist request is refused.
            assert (await fetch(http, playlist_url))[0] == 200
            await host.call("ban", user=watcher.user)
            assert (await fetch(http, playlist_url))[0] == 403

        # What the operator sees: `salonctl --json streams`.
        ctl = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "salon.daemon.admin.ctl",
                "--socket",
                str(daemon.state_dir / "admin.sock"),
                "--json",
                "streams",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ctl.returncode == 0, ctl.stderr
        streams = json.loads(ctl.stdout)
        await host.call("close_room")
        for cli in processes:
            await asyncio.to_thread(cli.proc.wait, 60)
            assert cli.proc.returncode == 0, cli.output()
    finally:
        for client in clients:
            await client.close()
        for cli in processes:
            if cli.proc.poll() is None:
                cli.proc.kill()
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        daemon.stop()

    (big,) = [s for s in streams if s["room"] == "big"]
    # The origin served each segment at most twice, though ten listeners fetched each one.
    assert big["segments_served"] > 5, big
    assert 1 <= big["max_fetches_per_segment"] <= 2, big
    access = (tmp_path / "nginx" / "access.log").read_text().splitlines()
    hits = sum(1 for line in access if line.startswith("HIT 200") and ".m4s?" in line)
    assert hits > 5 * STREAM_LISTENERS, hits

    source = read_audio(source_path)
    other = read_audio(speech("Something else entirely, said at another pace.", tmp_path / "x.wav"))
    climb = read_audio(climb_path)
    spoke_at = speaker.unix_time("speaking")
    delays = []
    # Each second of the speech is looked for on its own (a stream that paused to refill under
    # load shifts what follows). Speech through Opus then AAC scores a median of 0.7-0.9 here
    # (machine under load 8-17); other speech 0.1-0.57.
    # The stream is 2-3 s behind and pauses to refill add a few seconds: 20 s past the speech's
    # end is plenty.
    for cli in streamers:
        heard, offset = heard_around(cli, spoke_at, len(source) / RATE + 20)
        pieces = piecewise(source, heard)
        assert median_envelope(pieces) > 0.65, (cli.name, pieces)
        assert median_envelope(piecewise(other, heard)) < 0.62, cli.name
        delays.append(cli.unix_time("recording") + (offset + pieces[0].lag) / RATE - spoke_at)
    # Mouth to stream listener: one segment, half a playlist reload, the player's wait before
    # playing; media positions in the recordings, so the machine's load does not change it much.
    print("mouth-to-stream-listener delays (s):", [round(d, 2) for d in delays])
    assert float(np.median(delays)) <= 3.0, delays
    climbed_at = climber.unix_time("speaking")
    for cli in realtime:
        heard, _ = heard_around(cli, spoke_at, len(source) / RATE + 10)
        assert median_envelope(piecewise(source, heard)) > 0.7, cli.name
        heard, _ = heard_around(cli, climbed_at, len(climb) / RATE + 10)
        # The stream listener who came on stage was heard in real time (its phrase is short and
        # its process had just switched: 0.6-1.0 per second measured here; other speech < 0.55).
        assert median_envelope(piecewise(climb, heard)) > 0.6, cli.name
