"""``salonctl``: every admin action from a shell or a script.

    salonctl status
    salonctl rooms [--topic T]
    salonctl room ROOM
    salonctl mute ROOM USER
    salonctl --json rooms          # stable, documented output for scripts (docs/admin.md)

Human-readable output by default; ``--json`` (before or after the command) prints the daemon's
result as JSON (sorted keys). Exit status: 0 done, 1 the daemon refused (error code on stderr,
or as JSON with ``--json``), 2 bad usage, 3 the admin socket cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from salon.daemon.config import ConfigError, load_config
from salon.daemon.wire.confusables import confusable, name_warning
from salon.daemon.wire.messages import JoinRequestInfo, Participant
from salon.daemon.wire.text import printable

from .client import (
    CONFIG_ENV,
    AdminClient,
    AdminConnectionError,
    AdminError,
    default_socket_path,
)
from .protocol import (
    AuditEntry,
    ClusterStatus,
    RoomDetail,
    RoomStream,
    StatusInfo,
    StoreStatus,
)

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

Handler = Callable[[AdminClient, argparse.Namespace], Awaitable[Any]]

# Actions aimed at one user of one room: command -> (client method, help).
USER_ACTIONS: dict[str, tuple[str, str]] = {
    "invite-to-speak": ("invite_to_speak", "invite a listener onto the stage"),
    "to-audience": ("move_to_audience", "move a speaker back to the audience"),
    "lower-hand": ("lower_hand", "lower a listener's raised hand"),
    "mute": ("mute", "mute a speaker (the server drops their audio)"),
    "unmute": ("unmute", "lift a moderator mute"),
    "promote": ("promote", "make a member a moderator"),
    "demote": ("demote", "turn a moderator back into a speaker"),
    "transfer": ("transfer_ownership", "hand the room to a member"),
    "unban": ("unban", "lift a ban"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="salonctl",
        description="Administer a running salond through its admin socket.",
        epilog="The socket is --socket, else $SALON_ADMIN_SOCKET, else the admin.socket of "
        "--config (or $SALON_CONFIG), else state/admin.sock.",
    )
    parser.add_argument("--socket", type=Path, help="path of salond's admin socket")
    parser.add_argument("-c", "--config", type=Path, help="salond's configuration file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("status", help="server status and counters")
    rooms = sub.add_parser("rooms", help="live and scheduled rooms")
    rooms.add_argument("--topic")
    room = sub.add_parser("room", help="one room: stage, audience, hands, knocks, invites, bans")
    room.add_argument("room")
    members = sub.add_parser("members", help="every member of a room, however big (paged)")
    members.add_argument("room")

    create = sub.add_parser("create", help="create a room (owned by the operator)")
    create.add_argument("room")
    create.add_argument("--title", required=True)
    create.add_argument("--policy", choices=["open", "approval", "invite"], default="open")
    create.add_argument("--topic", action="append", default=[], dest="topics")
    create.add_argument("--max-speakers", type=int, default=10)
    create.add_argument("--mute-on-join", action="store_true")
    create.add_argument(
        "--persistent",
        action="store_true",
        help="keep the room open without its owner (an operator is never present in it)",
    )
    create.add_argument("--description", default="")
    create.add_argument("--scheduled-for", type=float, help="Unix time the room goes live")

    for name, text in (("close", "close a room for everyone"), ("start", "start a scheduled room")):
        sub.add_parser(name, help=text).add_argument("room")

    settings = sub.add_parser("set", help="change a room's title, topics, policy, ...")
    settings.add_argument("room")
    settings.add_argument("--title")
    settings.add_argument("--topic", action="append", dest="topics", help="repeat; replaces all")
    settings.add_argument("--no-topics", action="store_true", help="remove every topic")
    settings.add_argument("--policy", choices=["open", "approval", "invite"])
    settings.add_argument("--max-speakers", type=int)
    settings.add_argument("--mute-on-join", action=argparse.BooleanOptionalAction, default=None)
    settings.add_argument("--description")

    for name, text in (("approve", "admit a knocking requester"), ("deny", "refuse a knock")):
        knock = sub.add_parser(name, help=text)
        knock.add_argument("room")
        knock.add_argument(
            "who",
            help="request id, user id or display name of the requester (a name that is "
            "ambiguous or only looks like a knock's name is refused: give the user id)",
        )
        if name == "deny":
            knock.add_argument("--reason", default="")

    for name, (_, text) in USER_ACTIONS.items():
        action = sub.add_parser(name, help=text)
        action.add_argument("room")
        action.add_argument(
            "user",
            help="user id" if name == "unban" else "user id or display name of a present member",
        )
    remove = sub.add_parser(
        "remove", help="remove a member (they may come back; approval rooms: by knocking)"
    )
    remove.add_argument("room")
    remove.add_argument("user")
    remove.add_argument("--reason", default="")
    ban = sub.add_parser("ban", help="remove a user and refuse their return")
    ban.add_argument("room")
    ban.add_argument("user")
    ban.add_argument("--reason", default="")
    ban.add_argument("--duration", type=float, help="seconds (default: for good)")

    invite = sub.add_parser("invite", help="create an invite link")
    invite.add_argument("room")
    invite.add_argument("--role", choices=["listener", "speaker"], default="listener")
    invite.add_argument("--expires-in", type=float, help="seconds")
    invite.add_argument("--max-uses", type=int)
    sub.add_parser("invites", help="a room's usable invite links").add_argument("room")
    revoke = sub.add_parser("revoke", help="revoke an invite link")
    revoke.add_argument("room")
    revoke.add_argument("token")

    for name, text in (("record", "start recording a room"), ("stop-recording", "stop it")):
        sub.add_parser(name, help=text).add_argument("room")
    recordings = sub.add_parser("recordings", help="recordings, newest first; or one, by id")
    recordings.add_argument("recording", nargs="?", help="a recording's id: show it")
    recordings.add_argument("--room", help="only this room's recordings")
    recordings.add_argument("--limit", type=int, default=100)
    recordings.add_argument(
        "--output", type=Path, help="with a recording id: copy its Ogg Opus file here"
    )
    backup = sub.add_parser(
        "backup", help="write a consistent copy of the database while salond runs"
    )
    backup.add_argument("file", type=Path, help="the new backup file (must not exist)")
    sub.add_parser("streams", help="stream mode per room: listeners by mode, segments served")
    audit = sub.add_parser("audit", help="the audit log, newest first")
    audit.add_argument("--room")
    audit.add_argument("--limit", type=int, default=50)
    watch = sub.add_parser("watch", help="print events as they happen (Ctrl-C to stop)")
    watch.add_argument("--room", help="also stream this room's audio levels")
    watch.add_argument("--stats", action="store_true", help="include the periodic stats events")
    watch.add_argument("--count", type=int, help="stop after this many events")
    nodes = sub.add_parser(
        "nodes", help="the cluster's live nodes and their load, read from Redis (docs/cluster.md)"
    )
    nodes.add_argument("--redis", help="Redis URL; default: [cluster] redis_url of the config")
    store = sub.add_parser("store", help="offline store operations (salond stopped)")
    store_sub = store.add_subparsers(dest="store_command", required=True, metavar="OPERATION")
    copy = store_sub.add_parser(
        "copy", help="copy every table to another store and verify counts and checksums"
    )
    copy.add_argument("--from", dest="source", required=True, help="sqlite:PATH or postgresql://…")
    copy.add_argument("--to", dest="target", required=True, help="postgresql://… or sqlite:PATH")
    # Scripts write ``salonctl rooms --json`` as often as ``salonctl --json rooms``: accept both
    # (SUPPRESS keeps the top-level value when the option is not repeated after the command).
    for command in sub.choices.values():
        command.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
        )
    return parser


# ----------------------------------------------------------------------------- formatting


def when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def format_room_line(room: dict[str, Any]) -> str:
    topics = ", ".join(room.get("topics") or []) or "-"
    state = room["policy"] if room["state"] == "live" else room["state"]
    return (
        f"{room['room']:<20} {room['title'][:36]:<36} {state:<9} "
        f"{room['speakers']:>3} on stage {room['listeners']:>6} listening  [{topics}]"
    )


def _store_line(store: StoreStatus) -> str:
    where = f"store         {store.backend} {store.location}"
    if store.available:
        return f"{where}: ok, {store.queued} queued, {store.outages} outages"
    return f"{where}: UNAVAILABLE ({store.last_error}), {store.queued} queued"


def format_status(status: StatusInfo) -> str:
    traffic = status.traffic
    drops = ", ".join(f"{k} {v}" for k, v in sorted(status.drops.items())) or "none"
    plugins = ", ".join(f"{k} {v}" for k, v in sorted(status.plugin_errors.items())) or "none"
    abuse = ", ".join(f"{k} {v}" for k, v in sorted(status.abuse.items())) or "none"
    return "\n".join(
        [
            f"{status.server} (pid {status.pid}) on {status.address}, up {status.uptime:.0f} s",
            f"fingerprint   {status.fingerprint}",
            f"connections   {status.connections} open, {status.connections_total} since start",
            f"rooms         {status.rooms} live, {status.scheduled_rooms} scheduled;"
            f" {status.members} members, {status.speakers} on stage",
            f"packets       {traffic.packets_in} in, {traffic.packets_out} out"
            f" ({traffic.bytes_in} / {traffic.bytes_out} bytes)",
            f"media         {status.media_received} received, {status.media_forwarded} forwarded",
            f"drops         {drops}",
            f"plugin errors {plugins}",
            f"abuse refused {abuse}",
            *([_store_line(status.store)] if status.store is not None else []),
            *(_cluster_lines(status.cluster) if status.cluster is not None else []),
        ]
    )


def _cluster_lines(cluster: ClusterStatus) -> list[str]:
    """This node, then each live node's load and the rooms it carries (``salonctl nodes``
    reads the same from Redis without a daemon)."""
    lines = [
        f"cluster       node {cluster.node_id}, {len(cluster.nodes)} live, "
        f"{cluster.redirects} redirected"
    ]
    for node in cluster.nodes:
        rooms = ", ".join(node.room_ids) or "-"
        lines.append(
            f"  {'*' if node.this else ' '}{node.node_id} {node.public or node.address}:"
            f" {node.sessions} sessions, {node.rooms} rooms (carrying: {rooms})"
        )
    counts = cluster.counters
    if counts:
        refused = ", ".join(
            f"{key.removeprefix('bus_refused.')} {count}"
            for key, count in sorted(counts.items())
            if key.startswith("bus_refused.")
        )
        lines += [
            f"  relay       {counts.get('relay_published', 0)} published, "
            f"{counts.get('relay_delivered', 0)} delivered, "
            f"{counts.get('relay_queue_drops', 0)} queue drops, "
            f"{counts.get('relay_misrouted', 0)} misrouted",
            f"  refused     {counts.get('stale_epochs', 0)} stale epochs, "
            f"{counts.get('uplink_refused', 0)} uplinks, "
            f"{counts.get('fenced_writes', 0)} fenced writes, "
            f"{counts.get('control_refused', 0)} control; bus: {refused or 'none'}",
        ]
    return lines


def format_detail(detail: RoomDetail) -> str:
    s = detail.summary
    lines = [
        f"{s.room}: {s.title}  ({s.state}, {s.policy}, owner {s.owner or '-'})",
        f"topics: {', '.join(s.topics) or '-'}   on stage {s.speakers}/{s.max_speakers},"
        f" listening {s.listeners}",
    ]
    levels = {level.user: level for level in detail.levels}
    stage = [m for m in detail.participants if m.role != "listener"]
    audience = [m for m in detail.participants if m.role == "listener"]
    lines.append("stage:")
    for m in stage:
        level = levels.get(m.user)
        speaking = " speaking" if level is not None and level.speaking else ""
        muted = " muted-by-moderator" if m.muted_by_moderator else " muted" if m.muted else ""
        lines.append(f"  {m.role:<9} {m.user:<28} {m.display_name}{muted}{speaking}")
    if detail.partial:
        lines.append(
            f"audience ({len(audience)} of {s.listeners} listed;"
            f" salonctl members {s.room} lists all):"
        )
    else:
        lines.append(f"audience ({len(audience)}):")
    for m in audience:
        hand = " hand raised" if m.hand_raised else ""
        lines.append(f"  {m.user:<38} {m.display_name}{hand}")
    lines.append("hand queue: " + (", ".join(detail.hand_queue) or "-"))
    lines.append("knocks:" + ("" if detail.knocks else " -"))
    for k in detail.knocks:
        verified = ", ".join(f"{a}={v}" for a, v in k.verified.items()) or "nothing verified"
        trust = "; ".join(k.trust) or "-"
        warning = name_warning(k.display_name).describe()
        lines.append(
            f"  {k.request_id}  {k.display_name} ({k.user})  {verified}  trust: {trust}"
            f"  expires {when(k.expires_at)}" + (f"  {warning}" if warning else "")
        )
    lines.append("invites:" + ("" if detail.invites else " -"))
    for i in detail.invites:
        uses = f"{i.uses}/{i.max_uses}" if i.max_uses is not None else f"{i.uses}"
        lines.append(f"  {i.token}  {i.role}  uses {uses}  expires {when(i.expires_at)}")
    lines.append("bans:" + ("" if detail.bans else " -"))
    for b in detail.bans:
        lines.append(f"  {b.user}  until {when(b.until)}  by {b.by}  {b.reason}")
    if detail.stream is not None:
        lines.append("stream: " + format_stream(detail.stream))
    return "\n".join(lines)


def format_stream(stream: RoomStream) -> str:
    mixing = "mixing" if stream.mixing else "idle"
    return (
        f"{stream.realtime_listeners} real-time, {stream.stream_listeners} streaming; {mixing},"
        f" {stream.segments} segments, {stream.segments_served} served"
        f" (at most {stream.max_fetches_per_segment} per segment), {stream.playlists_served}"
        f" playlists, {stream.bytes_served} bytes, {stream.refused} refused,"
        f" {stream.cpu_seconds:.2f} s CPU"
    )


def format_audit(entry: AuditEntry) -> str:
    detail = " ".join(f"{k}={v}" for k, v in entry.detail.items() if v not in (None, ""))
    return (
        f"{when(entry.at)}  {entry.room:<16} {entry.actor:<24} {entry.action:<18}"
        f" {entry.target or '-':<24} {detail}"
    )


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    """Print ``data`` as JSON (which escapes every control character) or ``human`` as text.

    Human output carries names and titles guests chose: :func:`printable` keeps their control
    and bidi characters from reaching the terminal, whatever the daemon stored.
    """
    if args.json:
        print(json.dumps(msgspec.to_builtins(data), indent=2, sort_keys=True))
    else:
        print(printable(human, multiline=True))


# ----------------------------------------------------------------------------- commands


async def cmd_status(client: AdminClient, args: argparse.Namespace) -> None:
    status = await client.status()
    emit(args, status, format_status(status))


async def cmd_rooms(client: AdminClient, args: argparse.Namespace) -> None:
    rooms = await client.rooms_raw(args.topic)
    emit(args, rooms, "\n".join(format_room_line(r) for r in rooms) or "no rooms")


async def cmd_room(client: AdminClient, args: argparse.Namespace) -> None:
    detail = await client.room(args.room)
    emit(args, detail, format_detail(detail))


async def cmd_members(client: AdminClient, args: argparse.Namespace) -> None:
    members = await client.participants(args.room)
    lines = [
        f"{m.role:<9} {m.user:<38} {m.display_name}" + (" hand raised" if m.hand_raised else "")
        for m in members
    ]
    emit(args, members, "\n".join(lines) or "no members")


async def cmd_create(client: AdminClient, args: argparse.Namespace) -> None:
    room = await client.create_room(
        args.room,
        args.title,
        policy=args.policy,
        topics=args.topics,
        max_speakers=args.max_speakers,
        mute_on_join=args.mute_on_join,
        persistent=args.persistent,
        description=args.description,
        scheduled_for=args.scheduled_for,
    )
    emit(args, {"room": room}, f"created {room.room}: {room.title} ({room.policy}, {room.state})")


async def cmd_close(client: AdminClient, args: argparse.Namespace) -> None:
    emit(args, await client.close_room(args.room), f"closed {args.room}")


async def cmd_start(client: AdminClient, args: argparse.Namespace) -> None:
    emit(args, await client.start_room(args.room), f"started {args.room}")


async def cmd_set(client: AdminClient, args: argparse.Namespace) -> None:
    settings: dict[str, Any] = {
        "title": args.title,
        "topics": [] if args.no_topics else args.topics,
        "policy": args.policy,
        "max_speakers": args.max_speakers,
        "mute_on_join": args.mute_on_join,
        "description": args.description,
    }
    settings = {key: value for key, value in settings.items() if value is not None}
    if not settings:
        raise SystemExit("salonctl set: nothing to change (see salonctl set --help)")
    await client.update_room(args.room, **settings)
    room = (await client.room(args.room)).summary
    emit(args, {"room": room}, format_room_line(msgspec.to_builtins(room)))


async def find_knock(client: AdminClient, room: str, who: str) -> JoinRequestInfo:
    """The knock ``who`` names (its request id, or the requester's user id or display name).

    A display name admits nobody when it is ambiguous: two knocks whose names are equal or
    look alike (``Grace`` and ``Gr\u0430ce`` with a Cyrillic a), or a knock whose name only looks
    like the one given. Then the user id (or request id) is required.
    """
    detail = await client.room(room)
    for match in (lambda k: k.request_id == who, lambda k: k.user == who):
        found = [k for k in detail.knocks if match(k)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise AdminError("invalid_value", f"{who!r} names several knocks; use a request id")
    return pick_by_name(detail.knocks, who, f"pending knock in {room}", "request_not_found")


def pick_by_name(candidates: list[Any], name: str, what: str, missing_code: str) -> Any:
    """The one candidate (knock or participant) whose display name is ``name``; refuses when
    another candidate's name is equal or confusable, or when ``name`` only looks like one."""
    lookalikes = [c for c in candidates if confusable(c.display_name, name)]
    exact = [c for c in lookalikes if c.display_name == name]
    if len(lookalikes) > 1:
        listed = ", ".join(f"{c.display_name!r} ({c.user})" for c in lookalikes)
        raise AdminError(
            "ambiguous_name",
            f"{name!r} matches several names that look alike: {listed}; give the user id",
        )
    if lookalikes and not exact:
        other = lookalikes[0]
        raise AdminError(
            "ambiguous_name",
            f"no {what} is named exactly {name!r}; {other.display_name!r} ({other.user}) only "
            "looks like it: give the user id to act on it",
        )
    if not exact:
        raise AdminError(missing_code, f"no {what} named {name!r}")
    return exact[0]


def find_member(detail: RoomDetail, who: str) -> Participant:
    """The present member ``who`` names: a user id, or an unambiguous display name."""
    room = detail.summary.room
    by_id = [m for m in detail.participants if m.user == who]
    if by_id:
        return by_id[0]
    found: Participant = pick_by_name(
        detail.participants, who, f"member of {room}", "participant_not_found"
    )
    return found


async def cmd_approve(client: AdminClient, args: argparse.Namespace) -> None:
    knock = await find_knock(client, args.room, args.who)
    result = await client.approve_knock(args.room, knock.request_id)
    result = {
        "action": "approve_knock",
        "room": args.room,
        "request_id": knock.request_id,
        "ok": True,
        **result,
    }
    emit(args, result, f"admitted {knock.display_name} ({knock.user}) to {args.room}")


async def cmd_deny(client: AdminClient, args: argparse.Namespace) -> None:
    knock = await find_knock(client, args.room, args.who)
    result = await client.deny_knock(args.room, knock.request_id, args.reason)
    done = {
        "action": "deny_knock",
        "room": args.room,
        "user": knock.user,
        "request_id": knock.request_id,
        "ok": True,
        **result,
    }
    emit(args, done, f"denied {knock.display_name} ({knock.user})")


def user_action(method: str) -> Handler:
    async def run(client: AdminClient, args: argparse.Namespace) -> None:
        user, shown = args.user, args.user
        if args.command != "unban":  # a banned user is not present: unban takes a user id
            detail = await client.room(args.room)
            if detail.partial:  # a big room: look for the member among all of them
                detail.participants = await client.participants(args.room)
            member = find_member(detail, args.user)
            user = member.user
            shown = f"{member.display_name} ({member.user})"
            if args.command == "lower-hand" and user not in detail.hand_queue:
                # The daemon accepts lowering a lowered hand; a person at a shell wants to know.
                raise AdminError("no_raised_hand", f"{shown} has no raised hand in {args.room}")
        result = await getattr(client, method)(args.room, user)
        done = {"action": method, "room": args.room, "user": user, "ok": True, **result}
        emit(args, done, f"{args.command}: {shown} in {args.room}: done")

    return run


async def cmd_remove(client: AdminClient, args: argparse.Namespace) -> None:
    result = await client.remove(args.room, args.user, args.reason)
    emit(args, result, f"removed {args.user} from {args.room}")


async def cmd_ban(client: AdminClient, args: argparse.Namespace) -> None:
    result = await client.ban(args.room, args.user, args.reason, args.duration)
    emit(args, result, f"banned {args.user} from {args.room} until {when(result.get('until'))}")


async def cmd_invite(client: AdminClient, args: argparse.Namespace) -> None:
    invite = await client.create_invite(args.room, args.role, args.expires_in, args.max_uses)
    emit(args, {"invite": invite}, invite.token)


async def cmd_invites(client: AdminClient, args: argparse.Namespace) -> None:
    invites = await client.list_invites(args.room)
    lines = [
        f"{i.token}  {i.role:<8} uses {i.uses}/{i.max_uses or '-'}  expires {when(i.expires_at)}"
        for i in invites
    ]
    emit(args, invites, "\n".join(lines) or "no usable invite links")


async def cmd_revoke(client: AdminClient, args: argparse.Namespace) -> None:
    emit(args, await client.revoke_invite(args.room, args.token), f"revoked {args.token}")


async def cmd_record(client: AdminClient, args: argparse.Namespace) -> None:
    result = await client.act(args.room, "start_recording")
    emit(args, result, f"recording {args.room}: {result['recording']}")


async def cmd_stop_recording(client: AdminClient, args: argparse.Namespace) -> None:
    result = await client.act(args.room, "stop_recording")
    emit(args, result, f"stopped recording {result['recording']} of {args.room}")


def format_recording(r: dict[str, Any]) -> str:
    speakers = ", ".join(r["speakers"]) or "-"
    return (
        f"{r['id']}  {r['room']:<16} {when(r['started_at'])}  {r['duration']:>8.1f} s"
        f"  {r['status']:<11} speakers: {speakers}\n    {r['path']}"
    )


async def cmd_recordings(client: AdminClient, args: argparse.Namespace) -> None:
    result = await client.request(
        "recordings", room=args.room, recording=args.recording, limit=args.limit
    )
    found: list[dict[str, Any]] = result["recordings"]
    if args.recording is not None and not found:
        raise AdminError("recording_not_found", f"no recording {args.recording}")
    if args.output is not None:
        if args.recording is None:
            raise AdminError("bad_usage", "--output needs a recording id")
        # salonctl talks to a local socket: the file is on this machine, readable by path.
        try:
            shutil.copyfile(found[0]["path"], args.output)
        except OSError as exc:
            raise AdminError("copy_failed", f"cannot copy {found[0]['path']}: {exc}") from exc
    human = "\n".join(format_recording(r) for r in found) or "no recordings"
    if args.output is not None:
        human += f"\ncopied to {args.output}"
    emit(args, found, human)


async def cmd_backup(client: AdminClient, args: argparse.Namespace) -> None:
    # The daemon writes the file: give it an absolute path, resolved where salonctl runs.
    result = await client.request("backup", path=str(args.file.expanduser().absolute()))
    emit(
        args,
        result,
        f"backup written to {result['path']} ({result['bytes']} bytes,"
        f" schema {result['schema_version']}, integrity {result['integrity']})",
    )


async def cmd_streams(client: AdminClient, args: argparse.Namespace) -> None:
    result = await client.request("streams")
    streams = [msgspec.convert(s, RoomStream) for s in result["streams"]]
    human = "\n".join(f"{s.room:<20} {format_stream(s)}" for s in streams)
    emit(args, streams, human or "no rooms (or no stream mode)")


async def cmd_audit(client: AdminClient, args: argparse.Namespace) -> None:
    entries = await client.audit(args.limit, args.room)
    emit(args, entries, "\n".join(format_audit(e) for e in entries) or "no entries")


async def cmd_watch(client: AdminClient, args: argparse.Namespace) -> None:
    await client.subscribe(levels_room=args.room, stats_interval=5.0)
    seen = 0
    async for event in client.events():
        if event.kind == "stats" and not args.stats:
            continue
        if args.json:
            print(json.dumps(msgspec.to_builtins(event), sort_keys=True), flush=True)
        else:
            data = " ".join(f"{k}={v}" for k, v in event.data.items() if k != "room")
            line = f"{when(event.at)}  {event.kind:<13} {event.room or '-':<16} {data}"
            print(printable(line), flush=True)
        seen += 1
        if args.count is not None and seen >= args.count:
            return
    print(f"salonctl: {client.close_reason}", file=sys.stderr)


COMMANDS: dict[str, Handler] = {
    "status": cmd_status,
    "rooms": cmd_rooms,
    "room": cmd_room,
    "members": cmd_members,
    "create": cmd_create,
    "close": cmd_close,
    "start": cmd_start,
    "set": cmd_set,
    "approve": cmd_approve,
    "deny": cmd_deny,
    "remove": cmd_remove,
    "ban": cmd_ban,
    "invite": cmd_invite,
    "invites": cmd_invites,
    "revoke": cmd_revoke,
    "audit": cmd_audit,
    "streams": cmd_streams,
    "watch": cmd_watch,
    "record": cmd_record,
    "stop-recording": cmd_stop_recording,
    "recordings": cmd_recordings,
    "backup": cmd_backup,
    **{name: user_action(method) for name, (method, _) in USER_ACTIONS.items()},
}


async def run(args: argparse.Namespace) -> int:
    try:
        path = args.socket or default_socket_path(args.config)
    except ConfigError as exc:
        print(f"salonctl: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = await AdminClient.connect(path)
    except AdminConnectionError as exc:
        print(f"salonctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        await COMMANDS[args.command](client, args)
    except AdminError as exc:
        if args.json:
            print(json.dumps({"error": {"code": exc.code, "message": exc.message}}, sort_keys=True))
        print(printable(f"salonctl: {exc.code}: {exc.message}"), file=sys.stderr)
        return EXIT_REFUSED
    except AdminConnectionError as exc:
        print(f"salonctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "store":
        return store_command(args)
    if args.command == "nodes":
        return asyncio.run(nodes_command(args))
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``salonctl --json watch | head``): that ends the output, it is
        # not an error. Point stdout at /dev/null so that the interpreter's final flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def store_command(args: argparse.Namespace) -> int:
    """``salonctl store copy``: works on the databases themselves, not through salond."""
    from salon.daemon.store import StoreError
    from salon.daemon.store.copy import copy_store, format_report

    try:
        report = copy_store(args.source, args.target)
    except StoreError as exc:
        print(f"salonctl: store copy: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps([{**vars(item), "ok": item.ok} for item in report], sort_keys=True))
    else:
        for line in format_report(report):
            print(line)
    if not all(item.ok for item in report):
        print("salonctl: store copy: the copy does not match its source", file=sys.stderr)
        return 1
    return 0


async def nodes_command(args: argparse.Namespace) -> int:
    """``salonctl nodes``: reads the node registry in Redis itself, so it works from any
    machine that reaches Redis, whichever nodes are up."""
    url = args.redis
    if not url:
        config = args.config or (
            Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None
        )
        try:
            url = load_config(config).cluster.redis_url
        except ConfigError as exc:
            print(f"salonctl: configuration error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if not url:
        print(
            "salonctl: nodes: no cluster ([cluster] redis_url is empty; or pass --redis)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from salon.daemon.cluster.registry import live_nodes

    redis = Redis.from_url(url)
    try:
        nodes = await live_nodes(redis)
    except (RedisError, OSError) as exc:
        print(printable(f"salonctl: nodes: Redis unreachable: {exc}"), file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        await redis.aclose()
    if getattr(args, "json", False):
        print(json.dumps([vars_of(node) for node in nodes], indent=2, sort_keys=True))
        return 0
    for node in nodes:
        print(
            printable(
                f"{node.node_id:<32} {node.address:<24} {node.sessions:>6} sessions "
                f"{node.rooms:>4} rooms  up since {when(node.started_at)}"
            )
        )
    if not nodes:
        print("no live nodes")
    return 0


def vars_of(node: Any) -> dict[str, Any]:
    return {name: getattr(node, name) for name in node.__slots__}


if __name__ == "__main__":
    sys.exit(main())
