"""The profile of a knocking requester, shown before a host decides."""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from salon.daemon.wire.confusables import name_warning
from salon.daemon.wire.messages import JoinRequestInfo

from ..text import plain


class KnockProfile(Static):
    """Display name, verified identity, plugins' trust signals and the knock's deadline."""

    knock: JoinRequestInfo | None = None
    """The knock shown."""

    def show(self, knock: JoinRequestInfo | None) -> None:
        self.knock = knock
        if knock is None:
            self.update(Text("no knock selected", style="dim"))
            return
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("name", plain(knock.display_name))
        warning = name_warning(knock.display_name)
        if warning:
            # A lookalike name is how an impostor passes for someone the hosts know.
            table.add_row("", plain(warning.describe(), style="bold yellow"))
        table.add_row("user", plain(knock.user))
        if knock.verified:
            for attribute, value in knock.verified.items():
                table.add_row(plain(f"✓ {attribute}"), plain(value))
        else:
            table.add_row("verified", Text("nothing (guest)", style="yellow"))
        trust = plain("; ".join(knock.trust)) if knock.trust else Text("-", style="dim")
        table.add_row("trust", trust)
        waited = max(0.0, time.time() - knock.requested_at)
        left = max(0.0, knock.expires_at - time.time())
        table.add_row("waiting", f"{waited:.0f} s (expires in {left:.0f} s)")
        table.add_row("request", plain(knock.request_id))
        self.update(table)
