"""Modal dialogs: confirm a destructive action, ask for a line of text, create a room."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select

from ..text import plain


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no; ``y`` confirms, ``n`` or Escape cancels."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, confirm_label: str = "Yes") -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body"):
            yield Label(plain(self.question), id="question")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.confirm_label} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class PromptScreen(ModalScreen[str | None]):
    """One line of text; Enter submits, Escape cancels (None)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = "", placeholder: str = "") -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.value = value
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body"):
            yield Label(plain(self.question), id="question")
            yield Input(value=self.value, placeholder=self.placeholder, id="answer")
            yield Label("Enter to confirm, Escape to cancel", classes="hint")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class CreateRoomScreen(ModalScreen[dict[str, Any] | None]):
    """The settings of a new room; returns the ``create_room`` fields or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "create", "Create")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body"):
            yield Label("New room", id="question")
            yield Input(placeholder="room id (a-z, 0-9, - and _)", id="room-id")
            yield Input(placeholder="title", id="room-title")
            yield Input(placeholder="topics, comma separated", id="room-topics")
            yield Select(
                [
                    ("open: anyone may join", "open"),
                    ("approval: hosts admit knocks", "approval"),
                    ("invite: invite links only", "invite"),
                ],
                value="open",
                allow_blank=False,
                id="room-policy",
            )
            yield Checkbox(
                "persistent (stays open without its owner)", value=True, id="room-persistent"
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Create (ctrl+s)", variant="primary", id="create")
                yield Button("Cancel (esc)", id="cancel")

    @on(Input.Submitted)
    def next_field(self, event: Input.Submitted) -> None:
        if event.input.id == "room-topics":
            self.action_create()
        else:
            self.focus_next()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "create":
            self.action_create()
        else:
            self.dismiss(None)

    def action_create(self) -> None:
        room = self.query_one("#room-id", Input).value.strip()
        title = self.query_one("#room-title", Input).value.strip()
        topics = self.query_one("#room-topics", Input).value
        if not title:
            self.notify("a room needs a title", severity="warning")
            self.query_one("#room-title", Input).focus()
            return
        self.dismiss(
            {
                "room": room or None,
                "title": title,
                "topics": [t.strip() for t in topics.split(",") if t.strip()],
                "policy": self.query_one("#room-policy", Select).value,
                "persistent": self.query_one("#room-persistent", Checkbox).value,
            }
        )

    def action_cancel(self) -> None:
        self.dismiss(None)


class ReasonConfirmScreen(ModalScreen[str | None]):
    """Confirm a destructive action on someone, with an optional reason they are told.

    Enter (or the button) confirms and returns the reason ("" for none); Escape cancels (None).
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, confirm_label: str) -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body"):
            yield Label(plain(self.question), id="question")
            yield Input(placeholder="reason (optional, shown to them)", id="reason")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.confirm_label} (enter)", variant="error", id="yes")
                yield Button("Cancel (esc)", id="no")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "yes":
            self.dismiss(self.query_one("#reason", Input).value.strip())
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
