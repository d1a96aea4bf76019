"""Who may do what in a room: the permission matrix as data and the one function that reads it.

Each :class:`Rule` gives, per actor role, either ``ALLOWED`` or the error code a refusal
carries; actions aimed at another member also give the outcome per target role and whether the
actor must outrank the target (owner > moderator > speaker > listener). State-dependent checks
(stage full, no invitation, target not present...) live with the handlers, not here.

The operator (the admin API) acts with the owner's column and outranks everyone, the room's
owner included.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, TypeAlias

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from .errors import CoreError

OPERATOR: Final = "operator"
"""Pseudo-role of an operator acting through the admin API."""

ROLES: Final = ("owner", "moderator", "speaker", "listener")
"""Room roles, highest rank first; also the column order of :class:`Rule`."""

RANK: Final = {OPERATOR: 4, "owner": 3, "moderator": 2, "speaker": 1, "listener": 0}

STAGE_ROLES: Final = frozenset({"owner", "moderator", "speaker"})
"""Roles that are on the stage (and hold a media flow)."""

HOST_ROLES: Final = frozenset({"owner", "moderator"})
"""Roles that see knocks and the hand queue."""

ALLOWED: Final = None

_NP = ErrorCode.NOT_PERMITTED
_AOS = ErrorCode.ALREADY_ON_STAGE
_NOS = ErrorCode.NOT_ON_STAGE
_IV = ErrorCode.INVALID_VALUE
_OK = ALLOWED


class Action(str, enum.Enum):
    """Everything a member (or the operator) can do in a room."""

    LEAVE = "leave"
    RAISE_HAND = "raise_hand"
    LOWER_HAND = "lower_hand"
    LOWER_HAND_OF = "lower_hand_of"
    INVITE_TO_SPEAK = "invite_to_speak"
    ACCEPT_SPEAK = "accept_speak"
    DECLINE_SPEAK = "decline_speak"
    MOVE_SELF_TO_AUDIENCE = "move_self_to_audience"
    MOVE_TO_AUDIENCE = "move_to_audience"
    MUTE_SELF = "mute_self"
    MUTE = "mute"
    UNMUTE_SELF = "unmute_self"
    UNMUTE = "unmute"
    REMOVE = "remove"
    BAN = "ban"
    UNBAN = "unban"
    PROMOTE = "promote"
    DEMOTE = "demote"
    TRANSFER_OWNERSHIP = "transfer_ownership"
    UPDATE_ROOM = "update_room"
    CLOSE_ROOM = "close_room"
    CREATE_INVITE = "create_invite"
    REVOKE_INVITE = "revoke_invite"
    LIST_INVITES = "list_invites"
    LIST_PARTICIPANTS = "list_participants"
    APPROVE_KNOCK = "approve_knock"
    DENY_KNOCK = "deny_knock"
    START_ROOM = "start_room"
    START_RECORDING = "start_recording"
    STOP_RECORDING = "stop_recording"
    RECORDING_CONSENT = "recording_consent"


Outcome: TypeAlias = "ErrorCode | None"
Column: TypeAlias = tuple[Outcome, Outcome, Outcome, Outcome]


@dataclass(frozen=True)
class Rule:
    """One row of the matrix; columns follow :data:`ROLES` (owner, moderator, speaker, listener)."""

    actor: Column
    """Outcome per actor role."""
    target: Column | None = None
    """Outcome per target role, or None when the action has no target."""
    outrank: bool = False
    """Whether the actor must rank strictly above the target."""


_HOSTS: Final = Rule(actor=(_OK, _OK, _NP, _NP))
_OWNER: Final = Rule(actor=(_OK, _NP, _NP, _NP))
_EVERYONE: Final = Rule(actor=(_OK, _OK, _OK, _OK))

# fmt: off
MATRIX: Final[dict[Action, Rule]] = {
    #                                      owner  moderator speaker listener
    Action.LEAVE:                 _EVERYONE,
    Action.RAISE_HAND:            Rule(actor=(_AOS, _AOS, _AOS, _OK)),
    Action.LOWER_HAND:            _EVERYONE,
    Action.LOWER_HAND_OF:         Rule(actor=(_OK, _OK, _NP, _NP),
                                       target=(_OK, _OK, _OK, _OK)),
    Action.INVITE_TO_SPEAK:       Rule(actor=(_OK, _OK, _NP, _NP),
                                       target=(_AOS, _AOS, _AOS, _OK)),
    Action.ACCEPT_SPEAK:          Rule(actor=(_AOS, _AOS, _AOS, _OK)),
    Action.DECLINE_SPEAK:         Rule(actor=(_AOS, _AOS, _AOS, _OK)),
    Action.MOVE_SELF_TO_AUDIENCE: Rule(actor=(_NP, _NP, _OK, _NOS)),
    Action.MOVE_TO_AUDIENCE:      Rule(actor=(_OK, _OK, _NP, _NP),
                                       target=(_NP, _NP, _OK, _NOS), outrank=True),
    Action.MUTE_SELF:             Rule(actor=(_OK, _OK, _OK, _NOS)),
    Action.MUTE:                  Rule(actor=(_OK, _OK, _NP, _NP),
                                       target=(_OK, _OK, _OK, _NOS), outrank=True),
    Action.UNMUTE_SELF:           Rule(actor=(_OK, _OK, _OK, _NOS)),
    Action.UNMUTE:                Rule(actor=(_OK, _OK, _NP, _NP),
                                       target=(_OK, _OK, _OK, _NOS), outrank=True),
    Action.REMOVE:                Rule(actor=(_OK, _OK, _NP, _NP),
                                       target=(_OK, _OK, _OK, _OK), outrank=True),
    Action.BAN:                   Rule(actor=(_OK, _OK, _NP, _NP),
                                       target=(_OK, _OK, _OK, _OK), outrank=True),
    Action.UNBAN:                 _HOSTS,
    Action.PROMOTE:               Rule(actor=(_OK, _NP, _NP, _NP),
                                       target=(_NP, _IV, _OK, _OK), outrank=True),
    Action.DEMOTE:                Rule(actor=(_OK, _NP, _NP, _NP),
                                       target=(_NP, _OK, _IV, _IV), outrank=True),
    Action.TRANSFER_OWNERSHIP:    Rule(actor=(_OK, _NP, _NP, _NP),
                                       target=(_NP, _OK, _OK, _OK), outrank=True),
    Action.UPDATE_ROOM:           _HOSTS,
    Action.CLOSE_ROOM:            _HOSTS,
    Action.CREATE_INVITE:         _HOSTS,
    Action.REVOKE_INVITE:         _HOSTS,
    Action.LIST_INVITES:          _HOSTS,
    Action.LIST_PARTICIPANTS:     _EVERYONE,
    Action.APPROVE_KNOCK:         _HOSTS,
    Action.DENY_KNOCK:            _HOSTS,
    Action.START_ROOM:            _OWNER,
    Action.START_RECORDING:       _HOSTS,
    Action.STOP_RECORDING:        _HOSTS,
    Action.RECORDING_CONSENT:     Rule(actor=(_OK, _OK, _OK, _NOS)),
}
# fmt: on

_COLUMN: Final = {role: index for index, role in enumerate(ROLES)}
_COLUMN[OPERATOR] = 0

_REASONS: Final = {
    ErrorCode.NOT_PERMITTED: "not permitted",
    ErrorCode.ALREADY_ON_STAGE: "already on stage",
    ErrorCode.NOT_ON_STAGE: "not on stage",
    ErrorCode.INVALID_VALUE: "not applicable",
}


def outcome(action: Action, actor_role: str, target_role: str | None = None) -> Outcome:
    """The matrix's verdict: ``ALLOWED`` (None) or the error code of the refusal."""
    rule = MATRIX[action]
    verdict = rule.actor[_COLUMN[actor_role]]
    if verdict is not ALLOWED or rule.target is None or target_role is None:
        return verdict
    verdict = rule.target[_COLUMN[target_role]]
    if verdict is ALLOWED and rule.outrank and RANK[actor_role] <= RANK[target_role]:
        return ErrorCode.NOT_PERMITTED
    return verdict


def check(action: Action, actor_role: str, target_role: str | None = None) -> None:
    """Raise :class:`CoreError` unless ``actor_role`` may do ``action`` (to ``target_role``)."""
    verdict = outcome(action, actor_role, target_role)
    if verdict is not ALLOWED:
        message = f"{action.value}: {_REASONS[verdict]} (you are {actor_role}"
        if target_role is not None:
            message += f", they are {target_role}"
        raise CoreError(verdict, message + ")")


# The action a room request performs, as (naming oneself or no one, naming another member):
# the caller's own column of the matrix is checked from it before anything else about the
# request (PROTOCOL.md 3.6), so that a caller without the right learns nothing more.
_A = Action
REQUEST_ACTIONS: Final[dict[type, tuple[Action, Action]]] = {
    messages.ApproveKnock: (_A.APPROVE_KNOCK, _A.APPROVE_KNOCK),
    messages.DenyKnock: (_A.DENY_KNOCK, _A.DENY_KNOCK),
    messages.RaiseHand: (_A.RAISE_HAND, _A.RAISE_HAND),
    messages.LowerHand: (_A.LOWER_HAND, _A.LOWER_HAND_OF),
    messages.InviteToSpeak: (_A.INVITE_TO_SPEAK, _A.INVITE_TO_SPEAK),
    messages.AcceptSpeak: (_A.ACCEPT_SPEAK, _A.ACCEPT_SPEAK),
    messages.DeclineSpeak: (_A.DECLINE_SPEAK, _A.DECLINE_SPEAK),
    messages.MoveToAudience: (_A.MOVE_SELF_TO_AUDIENCE, _A.MOVE_TO_AUDIENCE),
    messages.Mute: (_A.MUTE_SELF, _A.MUTE),
    messages.Unmute: (_A.UNMUTE_SELF, _A.UNMUTE),
    messages.Remove: (_A.REMOVE, _A.REMOVE),
    messages.Ban: (_A.BAN, _A.BAN),
    messages.Unban: (_A.UNBAN, _A.UNBAN),
    messages.Promote: (_A.PROMOTE, _A.PROMOTE),
    messages.Demote: (_A.DEMOTE, _A.DEMOTE),
    messages.TransferOwnership: (_A.TRANSFER_OWNERSHIP, _A.TRANSFER_OWNERSHIP),
    messages.UpdateRoom: (_A.UPDATE_ROOM, _A.UPDATE_ROOM),
    messages.CloseRoom: (_A.CLOSE_ROOM, _A.CLOSE_ROOM),
    messages.CreateInvite: (_A.CREATE_INVITE, _A.CREATE_INVITE),
    messages.RevokeInvite: (_A.REVOKE_INVITE, _A.REVOKE_INVITE),
    messages.ListInvites: (_A.LIST_INVITES, _A.LIST_INVITES),
    messages.ListParticipants: (_A.LIST_PARTICIPANTS, _A.LIST_PARTICIPANTS),
    messages.StartRecording: (_A.START_RECORDING, _A.START_RECORDING),
    messages.StopRecording: (_A.STOP_RECORDING, _A.STOP_RECORDING),
    messages.RecordingConsent: (_A.RECORDING_CONSENT, _A.RECORDING_CONSENT),
}


ROLE_FREE_REQUESTS: Final[frozenset[type]] = frozenset({messages.ReceiverReport})
"""Room requests every member may send whatever its role, so no matrix row applies: a receiver
report is media housekeeping (PROTOCOL.md 11.9), answered for owner and listener alike."""


def check_caller(request: object, actor_role: str, names_other: bool) -> None:
    """Refuse a room request the caller's role may never make, whatever it names."""
    actions = REQUEST_ACTIONS.get(type(request))
    if actions is not None:
        check(actions[1] if names_other else actions[0], actor_role)
