"""Tunable limits of the core; the daemon fills them from its configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    """Time-outs and bounds the core enforces."""

    knock_ttl: float = 120.0
    """Seconds a knock on an approval room waits for an answer before it expires."""
    owner_grace: float = 60.0
    """Seconds a room without its owner (or without anyone) stays live before it closes."""
    outlet_queue: int = 16
    """Datagrams buffered per listener; when full the oldest is dropped (~320 ms of audio)."""
    max_rooms_per_user: int = 5
    """Rooms (live or scheduled) a user may own at the same time; operators are exempt."""
    speaking_interval: float = 0.2
    """Minimum seconds between two ``speaking`` events of one room."""
    max_datagram_size: int = 1100
    """Largest media datagram (flow id included) the forwarder accepts."""
    recording_queue: int = 4096
    """Datagrams buffered for a room's recorder (~8 s of 10 speakers); oldest dropped."""
    reminder_lead: float = 300.0
    """Seconds before a scheduled room's start when its subscribers get a ``room_reminder``
    (they get another one at the start time)."""
    max_speakers_cap: int = 100
    """Highest ``max_speakers`` a room may have (the protocol allows at most 100)."""
    snapshot_listeners: int = 100
    """Listeners a ``room_state`` lists at most besides its receiver and, for hosts, the raised
    hands; the rest are paged with ``list_participants``."""
    audience_events_above: int = 100
    """Above this many listeners in a room, listeners coming and going are not announced one
    by one (``participant_joined``/``left``): members get coalesced counts instead."""
    counts_interval: float = 1.0
    """Seconds between two coalesced ``room_updated`` events of a room with a big audience."""
