"""Text filter: refuses or masks listed words in room titles, descriptions and topics.

::

    [plugins.text_filter]
    words = ["spam", "free money"]         # words or phrases, matched whole, any case
    words_file = "/etc/salon/words.txt"    # more of them, one per line ("#" starts a comment)
    action = "deny"                        # "deny" the change, or "mask" the words with ***
    fields = ["title", "description", "topics"]

A topic containing a listed word is refused with either action (a masked topic would be
useless for discovery).
"""

from __future__ import annotations

import re
from pathlib import Path

from salon.daemon.core import Identity
from salon.daemon.hooks import Deny, SalonAPI, hookimpl

FIELDS = ("title", "description", "topics")


def read_words(path: Path) -> list[str]:
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            words.append(word)
    return words


class TextFilter:
    """Checks the text of room settings against a word list."""

    def __init__(self, api: SalonAPI) -> None:
        settings = api.settings
        settings.check_known(("words", "words_file", "action", "fields"))
        words = list(settings.strings("words"))
        words_file = settings.text("words_file")
        if words_file is not None:
            try:
                words.extend(read_words(Path(words_file)))
            except (OSError, UnicodeDecodeError) as exc:
                raise settings.problem("words_file", f"cannot read: {exc}") from None
        self.action = settings.text("action", "deny")
        if self.action not in ("deny", "mask"):
            raise settings.problem("action", f'expected "deny" or "mask", got {self.action!r}')
        self.fields = frozenset(settings.strings("fields", FIELDS))
        if not self.fields <= set(FIELDS):
            raise settings.problem("fields", f"expected some of {', '.join(FIELDS)}")
        self.pattern: re.Pattern[str] | None = None
        if words:
            # Longest first, so that a phrase wins over a word it contains.
            alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
            self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def find(self, text: str) -> str | None:
        """The first listed word in ``text``, or None."""
        if self.pattern is None:
            return None
        match = self.pattern.search(text)
        return match.group(0) if match else None

    def mask(self, text: str) -> str:
        assert self.pattern is not None
        return self.pattern.sub(lambda m: "*" * len(m.group(0)), text)

    @hookimpl
    def room_text(self, field: str, text: str) -> str | Deny | None:
        if field not in self.fields:
            return None
        word = self.find(text)
        if word is None:
            return None
        if self.action == "mask":
            return self.mask(text)
        return Deny(f"the {field} contains a word this server does not allow ({word!r})")

    @hookimpl
    def normalize_topics(self, identity: Identity, topics: list[str]) -> Deny | None:
        if "topics" not in self.fields:
            return None
        for topic in topics:
            word = self.find(topic)
            if word is not None:
                return Deny(f"the topic {topic!r} contains a word this server does not allow")
        return None
