"""A room's running recording as the core tracks it: who started it, who consented.

The core decides *what* is recorded — only the flows of stage members who said yes — and hands
their datagrams to the recording's :class:`~.forwarder.Outlet`, a tap the forwarder treats like
one more listener. Decrypting, mixing and writing happen outside the core (``daemon/recording``),
off the forwarding path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .forwarder import Outlet


@dataclass(eq=False)
class Recording:
    """One recording of a room, from ``start_recording`` to its end."""

    id: str
    "The recording's id (names it in events, the index and the file)."

    room: str
    "The room id."

    by: str
    "The user id of the host or operator who started it."

    started_at: float
    "When it started (the core's clock)."

    outlet: Outlet
    "Where the forwarder puts a copy of every recorded datagram."

    consent: dict[str, bool] = field(default_factory=dict)
    """Each stage member's answer during their current stage turn; absent: not answered yet
    (not recorded). Leaving the stage forgets the answer: a new turn asks again."""

    recorded: dict[str, int] = field(default_factory=dict)
    "Flow id of each stage member whose audio goes to the outlet now, by user id."
