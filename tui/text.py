"""Untrusted text on the console's screen: never markup, never a control character.

Names, titles, topics, reasons and plugins' trust signals come from guests. Every widget shows
them through :func:`plain` (a Rich ``Text``, which Textual and Rich never parse as markup) after
:func:`~salon.daemon.wire.text.printable` has replaced control and bidi characters, so even text
stored before the daemon's entry rule existed cannot draw a link, retitle the terminal or clear
the screen.
"""

from __future__ import annotations

from rich.text import Text

from salon.daemon.wire.text import printable


def plain(value: object, style: str = "") -> Text:
    """``value`` as literal, printable text (``[link=...]`` stays as typed)."""
    return Text(printable(value), style=style)


def plain_str(value: object) -> str:
    """``value`` printable, for places that take a plain string and no markup."""
    return printable(value)
