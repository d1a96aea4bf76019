"""The permission matrix, walked cell by cell through real requests."""

from __future__ import annotations

from typing import Any

import pytest

from salon.daemon.core import permissions
from salon.daemon.core.permissions import Action
from salon.daemon.core.service import SalonCore
from salon.daemon.wire import messages as m
from salon.daemon.wire.messages import ErrorCode
from tests.test_core_support import Harness

OK = "ok"
NP = "not_permitted"
AOS = "already_on_stage"
NOS = "not_on_stage"
IV = "invalid_value"

ROLES = ("owner", "moderator", "speaker", "listener")

# Actions without a target: the outcome for each actor role.
#                        owner moderator speaker listener
UNTARGETED: dict[str, tuple[str, str, str, str]] = {
    "leave":            (OK,  OK,  OK,  OK),
    "raise_hand":       (AOS, AOS, AOS, OK),
    "lower_hand":       (OK,  OK,  OK,  OK),
    "accept_speak":     (AOS, AOS, AOS, OK),
    "decline_speak":    (AOS, AOS, AOS, OK),
    "move_self":        (NP,  NP,  OK,  NOS),
    "mute_self":        (OK,  OK,  OK,  NOS),
    "unmute_self":      (OK,  OK,  OK,  NOS),
    "unban":            (OK,  OK,  NP,  NP),
    "update_room":      (OK,  OK,  NP,  NP),
    "close_room":       (OK,  OK,  NP,  NP),
    "create_invite":    (OK,  OK,  NP,  NP),
    "revoke_invite":    (OK,  OK,  NP,  NP),
    "list_invites":     (OK,  OK,  NP,  NP),
    "list_participants": (OK, OK,  OK,  OK),
    "approve_knock":    (OK,  OK,  NP,  NP),
    "deny_knock":       (OK,  OK,  NP,  NP),
    "start_room":       (OK,  NP,  NP,  NP),
    "start_recording":  (OK,  OK,  NP,  NP),
    "stop_recording":   (OK,  OK,  NP,  NP),
    "recording_consent": (OK, OK,  OK,  NOS),
}  # fmt: skip

# Actions on a user: per actor role, the outcome for each target role. The owner's "owner"
# target is themself (the only owner): the self form for mute/unmute/move/lower, invalid for
# the others. Other same-role targets are another member with that role.
#                                   target: owner moderator speaker listener
TARGETED: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "lower_hand_of": {
        "owner":     (OK,  OK,  OK,  OK),
        "moderator": (OK,  OK,  OK,  OK),
        "speaker":   (NP,  NP,  NP,  NP),
        "listener":  (NP,  NP,  NP,  NP),
    },
    "invite_to_speak": {
        "owner":     (AOS, AOS, AOS, OK),
        "moderator": (AOS, AOS, AOS, OK),
        "speaker":   (NP,  NP,  NP,  NP),
        "listener":  (NP,  NP,  NP,  NP),
    },
    "move_to_audience": {
        "owner":     (NP,  NP,  OK,  NOS),
        "moderator": (NP,  NP,  OK,  NOS),
        "speaker":   (NP,  NP,  NP,  NP),
        "listener":  (NP,  NP,  NP,  NP),
    },
    "mute": {
        "owner":     (OK,  OK,  OK,  NOS),
        "moderator": (NP,  NP,  OK,  NOS),
        "speaker":   (NP,  NP,  NP,  NP),
        "listener":  (NP,  NP,  NP,  NP),
    },
    "unmute": {
        "owner":     (OK,  OK,  OK,  NOS),
        "moderator": (NP,  NP,  OK,  NOS),
        "speaker":   (NP,  NP,  NP,  NP),
        "listener":  (NP,  NP,  NP,  NP),
    },
    "remove": {
        "owner":     (IV,  OK,  OK,  OK),
        "moderator": (NP,  NP,  OK,  OK),
        "speaker":   (NP,  NP,  NP,  NP),
        "listener":  (NP,  NP,  NP,  NP),
    },
    "ban": {
        "owner":     (IV,  OK,  OK,  OK),
        "moderator": (NP,  NP,  OK,  OK),
        "speaker":   (NP,  NP,  NP,  NP),
        "listener":  (NP,  NP,  NP,  NP),
    },
    "promote": {
        "owner":     (IV,  IV,  OK,  OK),
        "moderator": (NP,  NP,  NP,  NP),
        "speaker":   (NP,  NP,  NP,  NP),
        "listener":  (NP,  NP,  NP,  NP),
    },
    "demote": {
        "owner":     (IV,  OK,  IV,  IV),
        "moderator": (NP,  NP,  NP,  NP),
        "speaker":   (NP,  NP,  NP,  NP),
        "listener":  (NP,  NP,  NP,  NP),
    },
    "transfer_ownership": {
        "owner":     (IV,  OK,  OK,  OK),
        "moderator": (NP,  NP,  NP,  NP),
        "speaker":   (NP,  NP,  NP,  NP),
        "listener":  (NP,  NP,  NP,  NP),
    },
}  # fmt: skip

ACTOR_USER = {"owner": "owner", "moderator": "mod1", "speaker": "spk1", "listener": "lis1"}
TARGET_USER = {"owner": "owner", "moderator": "mod2", "speaker": "spk2", "listener": "lis2"}

MATRIX_ACTION = {
    "move_self": Action.MOVE_SELF_TO_AUDIENCE,
    "mute_self": Action.MUTE_SELF,
    "unmute_self": Action.UNMUTE_SELF,
}


class Scene:
    """A room with every role twice, a knock, an invite, a ban and pending invitations."""

    def __init__(self, *, scheduled: bool = False, recording: bool = False) -> None:
        self.h = h = Harness()
        owner = h.connect("owner")
        if scheduled:
            h.do(owner, m.CreateRoom, room="r1", title="t", scheduled_for=h.now + 3600)
            h.do(owner, m.Join, room="r1")
            for user in ("mod1", "spk1", "lis1"):
                h.connect(user)
            h.core.rooms["r1"].moderators.append("mod1")
            return
        h.do(owner, m.CreateRoom, room="r1", title="t", max_speakers=20)
        h.do(owner, m.Join, room="r1")
        for user in ("mod1", "mod2"):
            h.moderator(user)
        for user in ("spk1", "spk2"):
            h.speaker(user)
        for user in ("lis1", "lis2"):
            h.join(user)
            h.do(h.sessions[user], m.RaiseHand)
        for user in ("owner", "mod1", "mod2", "spk1", "spk2"):
            h.do(h.sessions[user], m.Unmute)
        h.do(owner, m.Mute, user="spk2")
        h.do(owner, m.Mute, user="mod2")
        h.do(owner, m.InviteToSpeak, user="lis1")
        h.do(owner, m.Ban, user="banned", duration=600)
        self.token = h.do(owner, m.CreateInvite)["invite"]["token"]
        h.do(owner, m.UpdateRoom, policy="approval")
        knocker = h.connect("knocker")
        self.request_id = h.do(knocker, m.Join, room="r1")["request_id"]
        if recording:
            h.do(owner, m.StartRecording)
        h.drain()

    def request(self, action: str, target: str | None) -> tuple[type, dict[str, Any]]:
        user = {"user": target} if target is not None else {}
        return {
            "leave": (m.Leave, {}),
            "raise_hand": (m.RaiseHand, {}),
            "lower_hand": (m.LowerHand, {}),
            "accept_speak": (m.AcceptSpeak, {}),
            "decline_speak": (m.DeclineSpeak, {}),
            "move_self": (m.MoveToAudience, {}),
            "mute_self": (m.Mute, {}),
            "unmute_self": (m.Unmute, {}),
            "unban": (m.Unban, {"user": "banned"}),
            "update_room": (m.UpdateRoom, {"title": "New title"}),
            "close_room": (m.CloseRoom, {}),
            "create_invite": (m.CreateInvite, {}),
            "revoke_invite": (m.RevokeInvite, {"token": getattr(self, "token", "")}),
            "list_invites": (m.ListInvites, {}),
            "list_participants": (m.ListParticipants, {}),
            "approve_knock": (m.ApproveKnock, {"request_id": getattr(self, "request_id", "")}),
            "deny_knock": (m.DenyKnock, {"request_id": getattr(self, "request_id", "")}),
            "start_room": (m.StartRoom, {"room": "r1"}),
            "start_recording": (m.StartRecording, {}),
            "stop_recording": (m.StopRecording, {}),
            "recording_consent": (m.RecordingConsent, {"consent": True}),
            "lower_hand_of": (m.LowerHand, user),
            "invite_to_speak": (m.InviteToSpeak, user),
            "move_to_audience": (m.MoveToAudience, user),
            "mute": (m.Mute, user),
            "unmute": (m.Unmute, user),
            "remove": (m.Remove, user),
            "ban": (m.Ban, user),
            "promote": (m.Promote, user),
            "demote": (m.Demote, user),
            "transfer_ownership": (m.TransferOwnership, user),
        }[action]

    def attempt(self, actor_role: str, action: str, target: str | None, expected: str) -> None:
        h = self.h
        session = h.sessions[ACTOR_USER[actor_role]]
        cls, fields = self.request(action, target)
        label = f"{actor_role} {action} {target or ''}".strip()
        if expected == OK:
            h.do(session, cls, **fields)
        else:
            error = h.refuse(session, ErrorCode(expected), cls, **fields)
            assert error.message, label


def cells() -> list[tuple[str, str, str | None, str]]:
    out: list[tuple[str, str, str | None, str]] = []
    for action, row in UNTARGETED.items():
        for role, expected in zip(ROLES, row, strict=True):
            out.append((action, role, None, expected))
    for action, table in TARGETED.items():
        for role, row in table.items():
            for target_role, expected in zip(ROLES, row, strict=True):
                out.append((action, role, target_role, expected))
    return out


def test_permission_matrix() -> None:
    """Every action x actor role (x target role) behaves as the table says; refusals are inert."""
    walked = 0
    for action, actor_role, target_role, expected in cells():
        scene = Scene(
            scheduled=action == "start_room",
            recording=action in ("stop_recording", "recording_consent"),
        )
        target = TARGET_USER[target_role] if target_role is not None else None
        scene.attempt(actor_role, action, target, expected)
        walked += 1
        # The matrix in the code says the same, wherever the outcome is the matrix's business.
        self_target = target_role == "owner" and actor_role == "owner"
        if self_target:
            continue
        matrix_action = MATRIX_ACTION.get(action) or Action(action)
        verdict = permissions.outcome(matrix_action, actor_role, target_role)
        if expected == OK:
            assert verdict is permissions.ALLOWED, (action, actor_role, target_role)
        elif expected != IV or verdict is not permissions.ALLOWED:
            assert verdict == ErrorCode(expected), (action, actor_role, target_role)
    assert walked == len(UNTARGETED) * 4 + len(TARGETED) * 16


def test_matrix_covers_every_action() -> None:
    covered = {MATRIX_ACTION.get(a) or Action(a) for a in [*UNTARGETED, *TARGETED]}
    assert covered == set(Action) == set(permissions.MATRIX)


@pytest.mark.parametrize(
    ("actor", "target", "allowed"),
    [
        ("operator", "owner", True),
        ("owner", "moderator", True),
        ("moderator", "moderator", False),
        ("moderator", "speaker", True),
        ("speaker", "listener", False),
    ],
)
def test_outranking(actor: str, target: str, allowed: bool) -> None:
    verdict = permissions.outcome(Action.REMOVE, actor, target)
    assert (verdict is permissions.ALLOWED) is allowed


def test_every_room_request_has_its_callers_column_checked_first() -> None:
    """PROTOCOL.md 3.6 step 6: each room request maps to the matrix row its caller is checked
    against before its target and values are looked at."""
    handlers = set(SalonCore()._room_handlers)
    # Every room request has a matrix row, except the few any member may send (declared as such).
    assert not set(permissions.REQUEST_ACTIONS) & permissions.ROLE_FREE_REQUESTS
    assert set(permissions.REQUEST_ACTIONS) | permissions.ROLE_FREE_REQUESTS == handlers
