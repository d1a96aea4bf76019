"""End to end over real QUIC: a listener who joins after a speaker's RTP sequence number wrapped
still hears that speaker, because the server rotated the flow at the wrap (PROTOCOL.md 11.8)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from salon.client.room_audio import RoomAudio
from salon.daemon.wire import messages as msg
from tests.test_reliability_support import AudioProbe, tone_frames

FIRST_SEQ = 0xFFFF - 40
"""The speaker's first sequence number: it wraps after 41 packets (under a second)."""


async def until(condition: Callable[[], bool], limit: float = 20.0) -> None:
    """Wait for ``condition``; ``limit`` only bounds a hung test, it is never a measure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.05)


async def test_late_listener_hears_a_speaker_whose_sequence_number_wrapped(live):
    owner = await live.client("Owner")
    speaker = await live.client("Speaker")
    early = await live.client("Early")
    late = await live.client("Late")
    await owner.create_room("Rollover", room="wrap")
    await owner.join("wrap")
    token = (await owner.call("create_invite", role="speaker"))["invite"]["token"]
    speaking = RoomAudio(
        speaker, source=tone_frames(), auto_unmute=True, first_sequence_number=FIRST_SEQ
    )
    early_probe, late_probe = AudioProbe(), AudioProbe()
    early_audio = RoomAudio(early)
    early_audio.on_frame_played = early_probe
    late_audio = RoomAudio(late)
    late_audio.on_frame_played = late_probe
    revoked: list[int] = []
    speaker.add_listener(
        lambda e: revoked.append(e.flow_id) if isinstance(e, msg.MediaKeyRevoked) else None
    )
    await early.join("wrap")
    await speaker.join("wrap", invite=token)
    tasks = [asyncio.ensure_future(a.run()) for a in (speaking, early_audio)]
    try:
        await until(lambda: speaking.sender is not None)
        assert speaking.sender is not None
        first_flow = speaking.sender.flow_id
        # The server rotates the flow at the wrap; the speaker follows its newest own key.
        await until(lambda: speaking.sender is not None and speaking.sender.flow_id != first_flow)
        assert speaking.sender is not None and speaking.sender.flow_id != first_flow
        second_flow = speaking.sender.flow_id
        # The old flow is revoked once the new one is used, and the speaker keeps speaking.
        await until(lambda: first_flow in revoked)
        assert revoked == [first_flow]
        assert speaking.sender is not None and speaking.sender.flow_id == second_flow
        sent = speaking.frames_sent
        await until(lambda: speaking.frames_sent >= sent + 10)
        assert speaking.frames_sent >= sent + 10

        # A listener who joins only now decrypts and decodes the speaker's audio.
        await late.join("wrap")
        tasks.append(asyncio.ensure_future(late_audio.run()))
        await until(lambda: late_probe.loud >= 50)
        assert late_probe.loud >= 50, late_audio.receiver.stats
        heard_flows = [
            f for f, user in late_audio.receiver.speakers.items() if user == speaker.user
        ]
        assert heard_flows == [second_flow]
        stats = late_audio.receiver.stats
        assert stats.drops["auth_failed"] == 0 and stats.drops["replay"] == 0, stats
        # The listener who was there all along heard the speaker across the rotation too.
        assert early_probe.loud >= 50
        assert early_audio.receiver.stats.drops["auth_failed"] == 0
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
