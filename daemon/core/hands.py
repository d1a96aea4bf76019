"""The ordered queue of raised hands of one room."""

from __future__ import annotations


class HandQueue:
    """Users asking to speak, first raised first; raising again keeps the first position."""

    def __init__(self) -> None:
        self._raised: dict[str, float] = {}

    def __contains__(self, user: object) -> bool:
        return user in self._raised

    def __len__(self) -> int:
        return len(self._raised)

    def raise_hand(self, user: str, now: float) -> bool:
        """Queue ``user`` at the end unless already queued; return whether the queue changed."""
        if user in self._raised:
            return False
        self._raised[user] = now
        return True

    def restore_hand(self, user: str, raised_at: float) -> bool:
        """Queue ``user`` whose hand was raised at ``raised_at`` (at the room's previous server,
        docs/cluster.md) ahead of every hand raised later: the queue keeps its first order
        whatever order its users come back in. Return whether the queue changed."""
        if user in self._raised:
            return False
        later = [u for u, at in self._raised.items() if at > raised_at]
        self._raised[user] = raised_at
        for moved in later:
            self._raised[moved] = self._raised.pop(moved)
        return True

    def raised_at(self) -> list[tuple[str, float]]:
        """The queue with when each hand went up, first raised first."""
        return list(self._raised.items())

    def lower_hand(self, user: str) -> bool:
        """Take ``user`` out of the queue; return whether they were in it."""
        return self._raised.pop(user, None) is not None

    def users(self) -> list[str]:
        """The queue, first raised first."""
        return list(self._raised)

    def clear(self) -> None:
        self._raised.clear()
