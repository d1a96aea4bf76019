"""Topic directory: curated topics, aliases, and rooms ranked for discovery.

::

    [plugins.topic_directory]
    topics = ["books", "jazz", "science", "tech"]   # the curated topics clients are shown
    strict = false                                  # true: refuse topics not curated
    featured = ["jazz"]                             # rooms with these are listed first

    [plugins.topic_directory.aliases]               # what people type -> the curated topic
    "jazz music" = "jazz"
    literature = "books"

Topics are normalised when a room is created or updated and when a client lists rooms by
topic: case and inner spaces folded, aliases resolved, duplicates removed. ``list_rooms``
replies carry the curated topics in ``topics``; rooms with a featured topic come first, then
rooms with a curated topic, each group in the core's order; live rooms before scheduled ones.
"""

from __future__ import annotations

from salon.daemon.core import Identity
from salon.daemon.hooks import Deny, SalonAPI, hookimpl
from salon.daemon.wire.messages import RoomSummary


def fold(topic: str) -> str:
    """Lower case, stripped, inner white space collapsed to one space."""
    return " ".join(topic.lower().split())


class TopicDirectory:
    """Curated topics for discovery."""

    def __init__(self, api: SalonAPI) -> None:
        settings = api.settings
        settings.check_known(("topics", "strict", "featured", "aliases"))
        self.topics = list(dict.fromkeys(fold(t) for t in settings.strings("topics")))
        self.strict = settings.flag("strict", False)
        self.aliases = {fold(a): fold(t) for a, t in settings.string_table("aliases").items()}
        self.featured = frozenset(fold(t) for t in settings.strings("featured"))
        curated = set(self.topics)
        for name, values in (("aliases", self.aliases.values()), ("featured", self.featured)):
            stray = sorted(set(values) - curated)
            if stray and (self.strict or name == "featured"):
                raise settings.problem(name, f"not among the curated topics: {stray}")
        if self.strict and not self.topics:
            raise settings.problem("strict", "needs a list of topics")

    def normalize(self, topic: str) -> str:
        folded = fold(topic)
        return self.aliases.get(folded, folded)

    @hookimpl
    def normalize_topics(self, identity: Identity, topics: list[str]) -> list[str] | Deny:
        normalized = list(dict.fromkeys(self.normalize(t) for t in topics))
        if self.strict:
            unknown = [t for t in normalized if t not in self.topics]
            if unknown:
                return Deny(
                    f"unknown topic {unknown[0]!r}; this server's topics: {', '.join(self.topics)}"
                )
        return normalized

    @hookimpl
    def known_topics(self) -> list[str]:
        return self.topics

    @hookimpl
    def rank_rooms(self, rooms: list[RoomSummary]) -> list[RoomSummary]:
        curated = set(self.topics)

        def rank(room: RoomSummary) -> tuple[bool, int]:
            topics = set(room.topics)
            group = 0 if topics & self.featured else 1 if topics & curated else 2
            return room.state != "live", group

        # Live rooms stay before scheduled ones; sorted() is stable, so within a group the
        # core's order (most members first, soonest first) stays.
        return sorted(rooms, key=rank)
