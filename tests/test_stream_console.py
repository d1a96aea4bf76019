"""What operators see of stream mode: the console's room summary (real-time vs stream
listeners, segments served) and ``salonctl streams``, against a real salond with its HTTP
endpoint and real clients, one of them placed in stream mode."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from salon.client.connection import SalonClient
from salon.daemon.admin.client import AdminClient
from salon.daemon.wire import messages as msg
from salon.tui.app import SalonAdminApp
from salon.tui.screens.room import RoomScreen
from tests.conftest import SalondProcess, start_salond
from tests.test_tui import SIZE, admin_socket, guest, open_console, screen_text, until


async def salonctl(daemon: SalondProcess, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "salon.daemon.admin.ctl",
        "--socket",
        str(admin_socket(daemon)),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_console_and_salonctl_show_realtime_and_stream_listeners(tmp_path: Path) -> None:
    config = tmp_path / "salond.toml"
    config.write_text(
        '[http]\nenabled = true\nhost = "127.0.0.1"\nport = 0\n'
        "[stream]\nenabled = true\nrealtime_listeners = 1\n"
    )
    daemon = start_salond(tmp_path / "state", "-c", str(config))
    clients: list[SalonClient] = []
    try:
        admin = await AdminClient.connect(admin_socket(daemon))
        try:
            await admin.create_room("big", "Big room", policy="open")
        finally:
            await admin.close()
        first = await guest(daemon, "First")
        second = await guest(daemon, "Second")
        clients += [first, second]
        await first.join("big")
        await second.join("big")  # past realtime_listeners = 1: stream mode
        event = await second.wait_for_event(msg.Stream, timeout=20)
        assert event.playlist is not None

        app = SalonAdminApp(admin_socket(daemon))
        async with app.run_test(size=SIZE) as pilot:
            await open_console(pilot, rooms=1)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, RoomScreen), "room screen")
            await until(
                pilot,
                lambda: "1 real-time / 1 streaming · 0 segments served" in screen_text(app),
                "the split of the audience",
            )
            # The stream listener fetches its playlist and a segment: the console counts it.
            async with aiohttp.ClientSession() as http:
                async with http.get(event.playlist) as response:
                    assert response.status == 200
                    playlist = await response.text()
                (segment,) = [line for line in playlist.splitlines() if ".m4s?" in line][-1:]
                async with http.get(urljoin(event.playlist, segment)) as response:
                    assert response.status == 200
            await until(
                pilot,
                lambda: "1 real-time / 1 streaming · 1 segments served" in screen_text(app),
                "the segment served",
            )
            # Back to real time on request: the mix lingers, the split changes.
            await second.call("set_stream", on=False)
            await until(
                pilot,
                lambda: "2 real-time / 0 streaming" in screen_text(app),
                "the listener back in real time",
            )

        code, out, err = await salonctl(daemon, "streams")
        assert code == 0, err
        line = r"^big\s+2 real-time, 0 streaming; mixing, \d+ segments, 1 served"
        assert re.search(line, out, re.M), out
        code, out, err = await salonctl(daemon, "--json", "streams")
        assert code == 0, err
        (big,) = json.loads(out)
        assert big["room"] == "big"
        assert (big["realtime_listeners"], big["stream_listeners"], big["mixing"]) == (2, 0, True)
        assert big["segments_served"] == 1 and big["max_fetches_per_segment"] == 1
        assert big["segments"] >= 1 and big["playlists_served"] == 1
    finally:
        for client in clients:
            await client.close()
        daemon.stop()
