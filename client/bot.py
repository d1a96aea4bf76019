"""A speaking bot: joins (or opens) a room as its owner and plays audio in a loop.

salond's demo runs one in-process against its own QUIC port; ``salon bot`` runs one against
any server. The bot is an ordinary client: real QUIC, real SRTP, real Opus.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from salon.client.audiofile import frames, read_audio
from salon.client.connection import RequestError, SalonClient
from salon.client.room_audio import RoomAudio

log = logging.getLogger("salon.bot")

DEMO_TEXT = (
    "Welcome to Salon, a self hosted server for live audio rooms. "
    "You are listening to the demo bot in the lobby. "
    "My voice travels as Opus, protected with S R T P, inside QUIC datagrams. "
    "Raise your hand if you would like to speak."
)


def demo_audio(directory: Path) -> np.ndarray:
    """Speech from espeak-ng when it is installed, otherwise a short chime melody."""
    path = directory / "demo-speech.wav"
    if not path.exists() and shutil.which("espeak-ng"):
        subprocess.run(
            ["espeak-ng", "-s", "150", "-w", str(path), DEMO_TEXT],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    if path.exists():
        speech = read_audio(path)
        pause = np.zeros(48000 * 2, dtype=np.int16)
        return np.concatenate([speech, pause])
    return chime()


def chime() -> np.ndarray:
    """Four notes and a rest: recognisable, and easy to check by frequency."""
    rate = 48000
    pieces = []
    for frequency in (523.25, 659.25, 783.99, 1046.5):
        t = np.arange(int(rate * 0.4)) / rate
        envelope = np.minimum(1.0, 10 * t) * np.exp(-3 * t)
        pieces.append(0.5 * envelope * np.sin(2 * np.pi * frequency * t))
    pieces.append(np.zeros(rate))
    return (np.concatenate(pieces) * 32767).astype(np.int16)


def looped_frames(samples: np.ndarray) -> Iterator[bytes]:
    chunk = list(frames(samples))
    return itertools.cycle(chunk)


def bot_guest_key(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = base64.b64encode(os.urandom(32)).decode()
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key


async def open_or_join(client: SalonClient, room: str, title: str, **settings: Any) -> None:
    try:
        await client.create_room(title, room=room, **settings)
    except RequestError as exc:
        if exc.code != "room_exists":
            raise
    await client.join(room)


async def run_bot(
    host: str,
    port: int,
    room: str,
    samples: np.ndarray,
    *,
    name: str = "Demo bot",
    title: str = "Salon demo lobby",
    credentials: dict[str, str] | None = None,
    fingerprint: str | None = None,
    insecure: bool = False,
    loop_audio: bool = True,
    topics: list[str] | None = None,
) -> None:
    """Connect, open the room (persistent, open policy) and speak until cancelled."""
    delay = 0.5
    while True:
        try:
            client = await SalonClient.connect(
                host,
                port,
                display_name=name,
                credentials=credentials,
                fingerprint=fingerprint,
                insecure=insecure,
            )
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            log.warning("bot could not connect (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        delay = 0.5
        source = looped_frames(samples) if loop_audio else frames(samples)
        audio = RoomAudio(client, source=source, auto_unmute=True)
        try:
            await open_or_join(client, room, title, persistent=True, topics=topics or ["demo"])
            log.info("bot %s speaking in %s", client.user, room)
            await audio.run()
        finally:
            await client.close()
        if not loop_audio and audio.source_done:
            return
        log.warning("bot lost its connection (%s); reconnecting", client.close_reason)


async def run_demo_bot(daemon: Any) -> None:
    """The demo of ``./run demo``: a bot speaking in ``lobby`` on this very daemon."""
    config = daemon.config
    state_dir = Path(config.server.state_dir)
    samples = read_audio(config.demo.audio) if config.demo.audio else demo_audio(state_dir)
    host, port = daemon.server.address
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    join_line = daemon.join_command(config.demo.room)
    banner = (
        f"\n  Demo room '{config.demo.room}' is open; a bot speaks in it.\n"
        f"  Listen from another terminal (writes what you hear to lobby.wav):\n\n"
        f"    .venv/bin/{join_line} --record lobby.wav --duration 15\n"
    )
    if getattr(daemon, "http", None) is not None:
        banner += f"\n  Or open it in a browser:\n\n    {daemon.web_url(config.demo.room)}\n"
    print(banner, flush=True)
    await run_bot(
        host,
        port,
        config.demo.room,
        samples,
        name=config.demo.bot_name,
        title=config.demo.title,
        credentials={"guest_key": bot_guest_key(state_dir / "demo-bot.key")},
        fingerprint=daemon.tls.fingerprint,
    )
