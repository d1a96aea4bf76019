"""Who is speaking in a room, from the RFC 6464 audio levels of the speakers' packets.

Levels are -dBov: 0 is the loudest, 127 silence. A speaker starts speaking after
:data:`ONSET_PACKETS` packets at or below :data:`ON_LEVEL`, each within :data:`ONSET_WINDOW`
of the previous one, and stops once no packet at or below :data:`OFF_LEVEL` has arrived for
:data:`HOLD` seconds (no packets at all counts as silence: DTX sends nothing). The two
thresholds and the hold are the hysteresis that keeps the indicator from flickering.

:meth:`SpeakerActivity.update` runs once per forwarded packet carrying a level, so it only
does arithmetic on slots; the owner of the detector learns about changes of the speaking set
through ``on_change`` and paces the events itself.
"""

from __future__ import annotations

from collections.abc import Callable

from salon.daemon.wire.messages import SpeakerLevel

ON_LEVEL = 50
"""A packet at or below this level counts towards starting to speak."""
OFF_LEVEL = 60
"""A packet at or below this level keeps a speaker speaking."""
HOLD = 0.4
"""Seconds without a packet at or below :data:`OFF_LEVEL` before a speaker stops."""
ONSET_PACKETS = 2
"""Loud packets needed to start speaking."""
ONSET_WINDOW = 0.1
"""Largest gap between two loud packets that still counts them together (5 frames)."""
SMOOTHING = 0.3
"""Weight of the newest level in the smoothed level reported in ``speaking`` events."""

SILENCE = 127


def _no_change() -> None:
    pass


class SpeakerActivity:
    """Speaking state of one speaker's current flow."""

    __slots__ = (
        "active_until",
        "detector",
        "loud_at",
        "loud_count",
        "smoothed",
        "speaking",
        "user",
    )

    def __init__(self, detector: SpeakingDetector, user: str) -> None:
        self.detector = detector
        self.user = user
        self.speaking = False
        self.smoothed = float(SILENCE)
        self.loud_count = 0
        self.loud_at = float("-inf")
        self.active_until = float("-inf")

    def update(self, level: int, now: float) -> None:
        """Account for one packet's audio level received at ``now``."""
        self.smoothed += (level - self.smoothed) * SMOOTHING
        if level <= ON_LEVEL:
            if now - self.loud_at > ONSET_WINDOW:
                self.loud_count = 0
            self.loud_count += 1
            self.loud_at = now
        if self.speaking:
            if level <= OFF_LEVEL:
                self.active_until = now + HOLD
            elif now >= self.active_until:
                self.speaking = False
                self.detector.on_change()
        elif self.loud_count >= ONSET_PACKETS and level <= ON_LEVEL:
            self.speaking = True
            self.active_until = now + HOLD
            self.detector.on_change()


class SpeakingDetector:
    """The speaking state of every speaker of one room."""

    def __init__(self, on_change: Callable[[], None] = _no_change) -> None:
        self.on_change = on_change
        """Called whenever the set of speaking users changes."""
        self.activities: dict[str, SpeakerActivity] = {}

    def track(self, user: str) -> SpeakerActivity:
        """Start (or restart) following ``user``; feed the result with their packets' levels."""
        self.forget(user)
        activity = self.activities[user] = SpeakerActivity(self, user)
        return activity

    def forget(self, user: str) -> None:
        """Stop following ``user`` (they left the stage)."""
        activity = self.activities.pop(user, None)
        if activity is not None and activity.speaking:
            activity.speaking = False
            self.on_change()

    def expire(self, now: float) -> None:
        """Stop the speakers whose hold ran out without packets."""
        changed = False
        for activity in self.activities.values():
            if activity.speaking and now >= activity.active_until:
                activity.speaking = False
                changed = True
        if changed:
            self.on_change()

    def deadline(self) -> float | None:
        """When the earliest current speaker stops unless more packets arrive."""
        ends = [a.active_until for a in self.activities.values() if a.speaking]
        return min(ends) if ends else None

    def speaking_users(self) -> frozenset[str]:
        return frozenset(a.user for a in self.activities.values() if a.speaking)

    def levels(self) -> list[SpeakerLevel]:
        """Current speakers, loudest first, with their smoothed level."""
        speaking = sorted(
            (a for a in self.activities.values() if a.speaking), key=lambda a: a.smoothed
        )
        return [SpeakerLevel(user=a.user, level=round(a.smoothed)) for a in speaking]

    def clear(self) -> None:
        self.activities.clear()
