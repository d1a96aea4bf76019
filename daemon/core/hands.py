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

    def lower_hand(self, user: str) -> bool:
        """Take ``user`` out of the queue; return whether they were in it."""
        return self._raised.pop(user, None) is not None

    def users(self) -> list[str]:
        """The queue, first raised first."""
        return list(self._raised)

    def clear(self) -> None:
        self._raised.clear()
