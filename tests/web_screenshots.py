"""Screenshots of the web client's room page for docs/web_client.md.

    .venv/bin/python -m tests.web_screenshots docs/images

Starts salond with its HTTP endpoint, a host and two knocking guests (Python clients) and the
page in headless Chromium as a moderator, then saves the room page at phone and desktop widths.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import tempfile
from pathlib import Path

from salon.client.connection import SalonClient
from salon.daemon.wire import messages as msg
from tests.browser import Browser
from tests.test_web_client import host_client, participant, start_web_salond, web_base

SIZES = {"phone": (390, 844), "desktop": (1280, 800)}


async def capture(folder: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="salon-screens-"))
    daemon = start_web_salond(state / "state")
    browsers = {name: Browser(width=w, height=h) for name, (w, h) in SIZES.items()}
    guests: list[SalonClient] = []
    try:
        host = await host_client(daemon)
        await host.create_room(
            "Book club: The Left Hand of Darkness", room="book-club", policy="approval"
        )
        await host.join("book-club")
        invite = (await host.call("create_invite", role="listener"))["invite"]["token"]
        for name, browser in browsers.items():
            label = "Amina" if name == "phone" else "Amina (laptop)"
            await asyncio.to_thread(
                browser.open, web_base(daemon) + f"/r/book-club?name={label}&invite={invite}"
            )
            joined = await host.wait_for_event(
                msg.ParticipantJoined,
                timeout=30,
                where=lambda e, n=label: e.participant.display_name == n,
            )
            await host.call("promote", user=joined.participant.user)
        for index, name in enumerate(["Bob", "Carol <script>alert(1)</script>"]):
            guest = await SalonClient.connect(
                daemon.host,
                daemon.port,
                display_name=name,
                fingerprint=daemon.fingerprint,
                credentials={
                    "guest_key": base64.b64encode(f"screenshot-guest-{index:016}".encode()).decode()
                },
            )
            guests.append(guest)
            result = await guest.call("join", room="book-club")
            assert result["status"] == "knocking", result
        for name, browser in browsers.items():
            await asyncio.to_thread(
                browser.wait, "the knocks", lambda b=browser: b.has_button("Approve Bob")
            )
            await asyncio.to_thread(
                browser.wait, "the host", lambda b=browser: participant(b, "Host") is not None
            )
            await asyncio.to_thread(
                browser.driver.save_screenshot, str(folder / f"web-room-{name}.png")
            )
        await host.close()
    finally:
        for guest in guests:
            await guest.close()
        for browser in browsers.values():
            browser.close()
        daemon.stop()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(capture(target))
