"""``salon``: the reference command-line client.

    salon rooms --server 127.0.0.1:4460 --fingerprint sha256:...
    salon create book-club --title "Book club" --policy approval --topic books
    salon join lobby --record lobby.wav --duration 15
    salon join book-club --play talk.wav          # raises a hand, speaks once invited

While joined, type a command and Enter: ``h`` raise/lower hand, ``m`` mute/unmute,
``a`` accept an invitation to speak, ``y``/``n`` agree to be recorded or withdraw, ``q`` leave.

``join`` survives a network drop or a server restart: it reconnects with backoff, rejoins the
room with its role and carries on playing and recording (silence for the gap), unless
``--no-reconnect`` or the server ended the session on purpose (removed, banned, closed for abuse).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from salon.client.connection import (
    MAX_REDIRECTS,
    ConnectionLost,
    Redirect,
    RedirectError,
    RequestError,
    SalonClient,
    ServerUnreachable,
    ServerVerificationError,
    load_guest_key,
    normalize_fingerprint,
    parse_redirect,
)
from salon.client.reconnect import Backoff, Outage, ReconnectingClient
from salon.daemon.wire import messages as msg
from salon.daemon.wire.text import printable

DEFAULT_SERVER = "127.0.0.1:4460"


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server and identity")
    group.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT of salond")
    group.add_argument(
        "--fingerprint",
        type=fingerprint_option,
        help="pinned SHA-256 fingerprint of the server certificate (sha256:AB:CD:...)",
    )
    group.add_argument("--cafile", help="CA bundle that signed the server certificate")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="DEVELOPMENT ONLY: accept any server certificate (warns on every connection)",
    )
    group.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up when the server has not answered within this time (default 10)",
    )
    group.add_argument("--name", default="Salon listener", help="your display name")
    group.add_argument(
        "--token",
        help="an access token issued by the server's operator (visible to other local users"
        " in the process list: prefer --token-file or SALON_TOKEN)",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        help="file holding your access token (first line); SALON_TOKEN in the environment"
        " works too",
    )
    group.add_argument(
        "--guest-key-file",
        type=Path,
        help="file holding your guest key (default: ~/.config/salon/guest_key)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="salon", description="Salon audio-room client.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    rooms = sub.add_parser("rooms", help="list live and scheduled rooms")
    rooms.add_argument("--topic")
    rooms.add_argument("--json", action="store_true", help="machine-readable output")
    add_connection_options(rooms)

    create = sub.add_parser("create", help="create a room (you become its owner)")
    add_room_settings(create)
    add_connection_options(create)

    join = sub.add_parser("join", help="join a room: listen, record, speak")
    join.add_argument("room")
    join.add_argument("--invite", help="invite token")
    join.add_argument("--create", action="store_true", help="create the room first if missing")
    join.add_argument("--title", default=None, help="title when --create makes the room")
    join.add_argument("--policy", choices=["open", "approval", "invite"], default="open")
    join.add_argument("--topic", action="append", default=[], dest="topics")
    join.add_argument("--play", type=Path, help="speak this audio file (any common format)")
    join.add_argument("--record", type=Path, help="write what you hear to a 48 kHz mono WAV")
    join.add_argument("--duration", type=float, help="leave after this many seconds")
    join.add_argument("--raise-hand", action="store_true", help="raise your hand on entry")
    join.add_argument(
        "--stream",
        action="store_true",
        help="listen to the room's stream (HLS, a few seconds behind) instead of real time",
    )
    join.add_argument("--quiet", action="store_true", help="no live speaking line")
    join.add_argument("--no-input", action="store_true", help="ignore standard input")
    join.add_argument(
        "--no-reconnect",
        action="store_true",
        help="end when the connection is lost (default: reconnect with backoff and rejoin)",
    )
    join.add_argument(
        "--consent",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="agree (or not) to be recorded when the room is recorded while you are on stage "
        "(default: ask on the terminal, or decline when there is none)",
    )
    add_connection_options(join)

    invite = sub.add_parser("invite", help="create an invite link for a room you moderate")
    invite.add_argument("room")
    invite.add_argument("--role", choices=["listener", "speaker"], default="listener")
    invite.add_argument("--expires-in", type=float)
    invite.add_argument("--max-uses", type=int)
    add_connection_options(invite)

    members = sub.add_parser(
        "members", help="who is in a room: enter it, list every member (paged), leave"
    )
    members.add_argument("room")
    members.add_argument("--json", action="store_true", help="machine-readable output")
    add_connection_options(members)

    bot = sub.add_parser("bot", help="open a room and speak an audio file in a loop")
    bot.add_argument("room")
    bot.add_argument("--play", type=Path, help="audio file (default: a chime)")
    bot.add_argument("--title", default="Salon bot room")
    bot.add_argument("--once", action="store_true", help="play the file once, then leave")
    add_connection_options(bot)
    return parser


def add_room_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", help="room id (a slug: a-z, 0-9, - and _)")
    parser.add_argument("--title", required=True)
    parser.add_argument("--policy", choices=["open", "approval", "invite"], default="open")
    parser.add_argument("--topic", action="append", default=[], dest="topics")
    parser.add_argument("--max-speakers", type=int, default=10)
    parser.add_argument("--mute-on-join", action="store_true")
    parser.add_argument("--persistent", action="store_true")
    parser.add_argument("--description", default="")


TOKEN_VARIABLE = "SALON_TOKEN"


def resolve_token(args: argparse.Namespace) -> str | None:
    """The access token from ``--token``, else ``--token-file``, else ``$SALON_TOKEN``."""
    if getattr(args, "token", None):
        return str(args.token)
    token_file: Path | None = getattr(args, "token_file", None)
    if token_file is not None:
        try:
            lines = token_file.expanduser().read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SystemExit(f"salon: cannot read the token file {token_file}: {exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise SystemExit(f"salon: the token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_VARIABLE, "").strip() or None


def fingerprint_option(text: str) -> str:
    """``--fingerprint``: refused by argparse with the expected form, never a traceback."""
    try:
        return normalize_fingerprint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc} (salond prints it at start; `salonctl status` shows it)"
        ) from None


def split_server(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"salon: --server must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def connect(args: argparse.Namespace, **options: Any) -> SalonClient:
    host, port = split_server(args.server)
    if args.token:
        credentials = {"token": args.token}
    else:
        credentials = {"guest_key": load_guest_key(args.guest_key_file)}
    return await SalonClient.connect(
        host,
        port,
        display_name=args.name,
        credentials=credentials,
        fingerprint=args.fingerprint,
        cafile=args.cafile,
        insecure=args.insecure,
        timeout=args.connect_timeout,
        **options,
    )


def format_room(room: dict[str, Any]) -> str:
    """One line of ``salon rooms``; titles and topics are the rooms' owners' text, so control
    and bidi characters are replaced before they reach the terminal."""
    topics = printable(", ".join(room.get("topics") or []) or "-")
    state = room["state"] if room["state"] != "live" else f"{room['policy']}"
    title = printable(room["title"])[:40]
    return (
        f"{printable(room['room']):<20} {title:<40} {state:<9} "
        f"{room['speakers']:>3} on stage {room['listeners']:>5} listening  [{topics}]"
    )


async def cmd_rooms(args: argparse.Namespace) -> int:
    client = await connect(args)
    try:
        rooms = await client.list_rooms(args.topic)
    finally:
        await client.close()
    if args.json:
        print(json.dumps(rooms, indent=2, sort_keys=True))
    elif not rooms:
        print("no rooms")
    else:
        for room in rooms:
            print(format_room(room))
    return 0


async def cmd_create(args: argparse.Namespace) -> int:
    client = await connect(args)
    try:
        room = await client.create_room(
            args.title,
            room=args.room,
            policy=args.policy,
            topics=args.topics,
            max_speakers=args.max_speakers,
            mute_on_join=args.mute_on_join,
            persistent=args.persistent,
            description=args.description,
        )
    finally:
        await client.close()
    print(printable(f"created {room['room']}: {room['title']} ({room['policy']})"))
    return 0


async def cmd_invite(args: argparse.Namespace) -> int:
    client = await connect(args)
    try:
        await client.join(args.room)
        result = await client.call(
            "create_invite", role=args.role, expires_in=args.expires_in, max_uses=args.max_uses
        )
        await client.leave()
    finally:
        await client.close()
    print(result["invite"]["token"])
    return 0


async def cmd_members(args: argparse.Namespace) -> int:
    """Members are visible to members only: enter the room as a listener, page through the
    whole audience (a big room's room_state lists only some of it), leave."""
    client = await connect(args)
    try:
        joined = await client.join(args.room)
        if joined.get("status") != "joined":
            print(
                f"not admitted to {printable(args.room)} ({joined.get('status')})", file=sys.stderr
            )
            return 1
        members = await client.all_participants()
        await client.leave()
    finally:
        await client.close()
    if args.json:
        print(json.dumps(members, indent=2, sort_keys=True))
        return 0
    for member in members:
        hand = "  hand raised" if member["hand_raised"] else ""
        print(printable(f"{member['role']:<9} {member['user']:<28} {member['display_name']}{hand}"))
    return 0


class LiveLine:
    """One terminal line: who is speaking, their level, and your state."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.names: dict[str, str] = {}

    def show(self, audio: Any, state: str, recording: bool = False) -> None:
        if not self.enabled:
            return
        if recording:
            state = f"\x1b[31m\u25cf REC\x1b[0m {state}"
        parts = []
        for user, level in sorted(audio.levels.items(), key=lambda item: item[1]):
            bars = "#" * max(0, (100 - level) // 10)
            parts.append(f"{printable(self.names.get(user, user))} {bars:<10}")
        text = " | ".join(parts) or "(silence)"
        sys.stderr.write(f"\r\x1b[K{state} {text}"[:200])
        sys.stderr.flush()


# A joined client pings every KEEPALIVE seconds and counts the connection as lost after
# IDLE_TIMEOUT seconds without a packet; it then reconnects, waiting RECONNECT_INITIAL seconds
# doubling up to RECONNECT_MAXIMUM between attempts (with jitter).
KEEPALIVE = 5.0
IDLE_TIMEOUT = 15.0
# A node that dies mid-room is noticed sooner: when audio stops arriving for PROBE_AFTER seconds
# the client pings, and a ping unanswered for ANSWER_WITHIN seconds counts as a lost connection
# (it then reconnects, to another node of a cluster first: PROTOCOL.md 17).
PROBE_AFTER, ANSWER_WITHIN = 1.5, 4.0
RECONNECT_INITIAL, RECONNECT_MAXIMUM = 1.0, 30.0
# Leaving is bounded whatever the network does: at most LEAVE_TIMEOUT seconds for the `leave`
# reply, then CLOSE_TIMEOUT for QUIC's close handshake (the server's idle timeout reclaims a
# session whose CONNECTION_CLOSE was lost).
LEAVE_TIMEOUT, CLOSE_TIMEOUT = 0.8, 0.7


async def cmd_join(args: argparse.Namespace) -> int:
    from salon.client.audiofile import WavWriter, frames, read_audio
    from salon.client.room_audio import RoomAudio

    source = frames(read_audio(args.play)) if args.play else None
    writer = WavWriter(args.record) if args.record else None
    line = LiveLine(not args.quiet)
    status = {"state": "listening"}
    interactive = not args.no_input and sys.stdin.isatty()
    recording = RecordingState(args.consent if args.consent is not None or interactive else False)
    stop = asyncio.Event()
    if not args.verbose:
        # The reconnects are reported on the terminal by on_retry and on_reconnected below.
        logging.getLogger("salon.client.reconnect").setLevel(logging.CRITICAL)

    def note(text: str) -> None:
        if line.enabled:
            sys.stderr.write("\r\x1b[K")
        # Notes carry names and reasons other people chose: never raw control characters.
        print(printable(text), file=sys.stderr, flush=True)

    def on_event(event: Any, client: SalonClient) -> None:
        if isinstance(event, msg.RoomState):
            for participant in event.room.participants:
                line.names[participant.user] = participant.display_name
        elif isinstance(event, (msg.ParticipantJoined, msg.ParticipantUpdated)):
            line.names[event.participant.user] = event.participant.display_name
        elif isinstance(event, msg.SpeakInvitation):
            if source is not None:
                spawn(_call_quietly(client, "accept_speak"))
            else:
                note(f"{event.by} invites you to speak: type 'a' to accept")
        elif isinstance(event, msg.KnockDenied):
            note(f"not admitted: {event.reason}")
            status["state"] = "denied"
        elif isinstance(event, msg.Removed):
            # A deliberate end (removed, banned, replaced): leave, never rejoin.
            why = event.reason or "no reason given"
            if event.banned:
                until = f" until {time.strftime('%Y-%m-%d %H:%M', time.localtime(event.until))}"
                note(f"banned from {event.room}{until if event.until else ' for good'}: {why}")
            else:
                note(f"removed from {event.room}: {why}")
            stop.set()
        elif isinstance(event, msg.RoomClosed):
            note(f"room closed: {event.reason}")
            stop.set()
        elif isinstance(event, msg.Muted):
            note(f"muted by {event.by}")
        elif isinstance(event, msg.ServerShutdown):
            note(f"server shutting down: {event.reason}")
        recording.on_event(event, client, note)

    def listen(client: SalonClient) -> None:
        # Only the connection of the moment speaks: a replaced one's late events are ignored.
        client.add_listener(
            lambda event: on_event(event, client) if client is audio.client else None
        )

    def on_connected(client: SalonClient) -> None:
        # Before the rejoin: the audio path must see the new connection's room_state.
        listen(client)
        audio.rebind(client)

    def on_retry(outage: Outage, delay: float) -> None:
        if outage.attempts == 0:
            note(f"connection lost ({outage.reason}), reconnecting in {delay:.0f} s")
        else:
            note(f"server unreachable, retrying in {delay:.0f} s")

    def on_reconnected(outage: Outage) -> None:
        if outage.rejoined == "joined":
            note(f"back in {args.room} (after {outage.seconds:.1f} s)")
            if args.stream:
                spawn(_ask_stream(session))
            if source is not None or args.raise_hand:
                spawn(_raise_hand(session))
        elif outage.rejoined == "knocking":
            note(f"reconnected: knocking to re-enter {args.room} ...")
        else:
            note(f"reconnected, but could not rejoin {args.room}: {session.rejoin_error}")
            stop.set()

    entry = (args.server, args.fingerprint, args.cafile, args.insecure)
    joined = {"yes": False}

    async def connect_following() -> SalonClient:
        """`salon join` follows redirects (PROTOCOL.md 17): it connects to the node it was sent
        to, which will not redirect it again; when that node cannot be reached (it died, and
        the registry has not noticed yet or no longer lists it) it goes back for good to the
        node it first asked, which serves a client that already followed a redirect."""
        # Once in the room, a reconnect rejoins it: never to be redirected then.
        redirects = None if joined["yes"] else args.redirects
        try:
            return await connect(args, idle_timeout=IDLE_TIMEOUT, redirects=redirects)
        except (ServerUnreachable, ConnectionError, OSError, asyncio.TimeoutError) as exc:
            if not args.redirects or args.server == entry[0]:
                raise
            note(f"{args.server} unreachable ({exc}); back to {entry[0]}")
            args.server, args.fingerprint, args.cafile, args.insecure = entry
            return await connect(args, idle_timeout=IDLE_TIMEOUT, redirects=redirects)

    async def connect_node(node: Redirect) -> SalonClient:
        """Another node of the cluster, as the lost server listed it: its certificate pinned,
        whatever verified the first (PROTOCOL.md 17)."""
        note(f"trying node {node.node} at {node.server}")
        moved = argparse.Namespace(
            **{**vars(args), "server": node.server, "fingerprint": node.fingerprint}
        )
        moved.cafile, moved.insecure = None, False
        return await connect(moved, idle_timeout=IDLE_TIMEOUT)

    def new_session() -> ReconnectingClient:
        return ReconnectingClient(
            connect_following,
            backoff=Backoff(initial=RECONNECT_INITIAL, maximum=RECONNECT_MAXIMUM),
            keepalive=KEEPALIVE,
            on_connected=on_connected,
            on_retry=on_retry,
            on_reconnected=on_reconnected,
            reconnect=not args.no_reconnect,
            connect_node=connect_node,
            probe_after=PROBE_AFTER,
            answer_within=ANSWER_WITHIN,
        )

    args.redirects = 0
    session = new_session()
    client = await session.start()
    recording_started = {"first": False}

    def record(pcm: bytes) -> None:
        assert writer is not None
        if not recording_started["first"]:
            # The wall-clock time of the file's first sample: lets a listener measure delays.
            recording_started["first"] = True
            note(f"recording to {args.record} from unix time {time.time():.3f}")
        writer.write(pcm)

    def on_frame_sent(count: int, now: float) -> None:
        if count == 1:
            note(f"speaking from unix time {time.time():.3f}")

    def on_stream(playlist: str | None) -> None:
        if playlist is not None:
            note("stream mode: playing the room's stream (a few seconds behind live)")
        else:
            note("real time")

    audio = RoomAudio(
        client, source=source, sink=record if writer else None, auto_unmute=source is not None
    )
    audio.on_frame_sent = on_frame_sent
    audio.on_stream = on_stream
    listen(client)
    try:
        if args.create:
            try:
                await client.create_room(
                    args.title or args.room, room=args.room, policy=args.policy, topics=args.topics
                )
            except RequestError as exc:
                if exc.code != "room_exists":
                    raise
        started = time.monotonic()
        result = await session.join(args.room, args.invite)
        while result["status"] == "redirect":
            target = parse_redirect(result)
            if args.redirects >= MAX_REDIRECTS:
                raise RedirectError(f"more than {MAX_REDIRECTS} redirects; last to {target.server}")
            args.redirects += 1
            note(f"redirected to node {target.node} at {target.server}")
            await session.close(timeout=CLOSE_TIMEOUT)
            # The redirect names the node's own certificate: pinned, whatever verified the first.
            args.server, args.fingerprint = target.server, target.fingerprint
            args.cafile, args.insecure = None, False
            session = new_session()
            client = await session.start()
            listen(client)
            audio.rebind(client)
            result = await session.join(args.room, args.invite)
        joined["yes"] = True
        if result["status"] == "knocking":
            note("knocking: waiting for a host to let you in ...")
            wait = max(1.0, float(result["expires_at"]) - time.time()) + 5
            if args.duration is not None and args.duration < wait:
                wait = args.duration  # --duration bounds the whole visit, knocking included
            try:
                await client.wait_for_event((msg.RoomState, msg.KnockDenied), timeout=wait)
            except asyncio.TimeoutError:
                note(f"not let in within {wait:.0f} s: withdrew the knock")
                await _call_quietly(client, "cancel_knock")
                return 3
            if status["state"] == "denied":
                return 3
        remaining = args.duration
        if remaining is not None:
            remaining = max(0.0, remaining - (time.monotonic() - started))
        note(f"joined {args.room} as {client.user}")
        if args.stream:
            await _ask_stream(session)
        if source is not None or args.raise_hand:
            await _raise_hand(session)
        if interactive:
            asyncio.get_running_loop().add_reader(
                sys.stdin.fileno(), _on_stdin, session, audio, stop, note, recording
            )
        with contextlib.suppress(NotImplementedError, RuntimeError):
            # SIGTERM ends the join like `q`: leave the room and close the recording whole.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        runner = asyncio.ensure_future(audio.run(remaining, stop, across_reconnects=True))
        while not runner.done():
            await asyncio.sleep(0.1)
            if session.stopped_reason:
                stop.set()
            if not session.connected:
                state = "reconnecting"
            else:
                state = "speaking" if audio.speaking_allowed else "listening"
            line.show(audio, f"[{state}]", recording.active)
            if source is not None and audio.source_done and args.duration is None:
                stop.set()
        await runner
        if session.stopped_reason:
            note(f"salon: {session.stopped_reason}")
            return 1
        if session.connected and audio.client.room:
            # Polite, but never worth staying for: on a lossy or dead path the reply may not
            # come before the idle timeout, and the user asked to leave now.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_call_quietly(session, "leave"), LEAVE_TIMEOUT)
    except (RequestError, ConnectionLost, RedirectError) as exc:
        note(f"salon: {exc}")
        return 1
    finally:
        if writer is not None:
            writer.close()
        await session.close(timeout=CLOSE_TIMEOUT)
    note(f"left after {audio.frames_played * 0.02:.1f} s; sent {audio.frames_sent} frames")
    return 0


async def _ask_stream(session: ReconnectingClient) -> None:
    try:
        await session.call("set_stream", on=True)
    except (RequestError, ConnectionLost) as exc:
        note_error("set_stream", exc)


async def _raise_hand(session: ReconnectingClient) -> None:
    try:
        await session.call("raise_hand")
    except RequestError as exc:
        if exc.code != "already_on_stage":
            note_error("raise_hand", exc)
    except ConnectionLost as exc:
        note_error("raise_hand", exc)


def note_error(type_: str, exc: Exception) -> None:
    print(f"{type_}: {exc}", file=sys.stderr)


class RecordingState:
    """Whether the room is recorded, and this user's answer when asked to be in it.

    ``consent`` is the answer given in advance (``--consent``/``--no-consent``); None means
    ask the user on the terminal.
    """

    def __init__(self, consent: bool | None) -> None:
        self.consent = consent
        self.active = False
        self.recorded = False
        """Whether this user's voice is in the running recording."""

    def on_event(self, event: Any, client: SalonClient, note: Any) -> None:
        if isinstance(event, msg.RoomState):
            self.active = event.room.summary.recording
        elif isinstance(event, msg.RoomUpdated):
            self.active = event.room.recording
        elif isinstance(event, msg.RecordingStarted):
            self.active = True
            note(f"\u25cf the room is being recorded (started by {event.by})")
        elif isinstance(event, msg.RecordingStopped):
            self.active = self.recorded = False
            note("the recording stopped")
        elif isinstance(event, msg.RecordingConsentChanged) and event.user == client.user:
            self.recorded = event.consent
            note("you are recorded" if event.consent else "you are not recorded")
        elif isinstance(event, msg.RecordingConsentRequested):
            if self.consent is None:
                note("the room is recorded: type 'y' to be in the recording, 'n' to stay out")
            else:
                self.answer(client, self.consent, note)
        elif isinstance(event, (msg.RoomClosed, msg.Removed)):
            self.active = self.recorded = False

    def answer(self, client: SalonClient | ReconnectingClient, consent: bool, note: Any) -> None:
        if not self.active:
            note("the room is not being recorded")
            return
        spawn(_call_quietly(client, "recording_consent", consent=consent))


_background: set[asyncio.Task[None]] = set()


def spawn(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a request in the background, keeping a reference until it is done."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _call_quietly(
    client: SalonClient | ReconnectingClient, type_: str, **fields: Any
) -> None:
    try:
        await client.call(type_, **fields)
    except (RequestError, ConnectionLost) as exc:
        note_error(type_, exc)


def _on_stdin(
    client: ReconnectingClient,
    audio: Any,
    stop: asyncio.Event,
    note: Any,
    recording: RecordingState,
) -> None:
    text = sys.stdin.readline().strip().lower()
    if text in ("q", "quit", "leave", ""):
        if text != "" or sys.stdin.closed:
            stop.set()
        return
    if text[0] in ("y", "n"):
        recording.answer(client, text[0] == "y", note)
        return
    commands = {
        "h": "lower_hand" if audio.hand_raised else "raise_hand",
        "m": "mute" if not audio.muted else "unmute",
        "a": "accept_speak",
    }
    action = commands.get(text[0])
    if action is None:
        note(
            "commands: h (raise hand), m (mute/unmute), a (accept invitation), "
            "y/n (agree to be recorded / withdraw), q (leave)"
        )
        return
    if action == "raise_hand":
        audio.hand_raised = True
    elif action == "lower_hand":
        audio.hand_raised = False
    spawn(_call_quietly(client, action))


async def cmd_bot(args: argparse.Namespace) -> int:
    from salon.client.audiofile import read_audio
    from salon.client.bot import chime, run_bot

    host, port = split_server(args.server)
    samples = read_audio(args.play) if args.play else chime()
    credentials = (
        {"token": args.token} if args.token else {"guest_key": load_guest_key(args.guest_key_file)}
    )
    await run_bot(
        host,
        port,
        args.room,
        samples,
        name=args.name,
        title=args.title,
        credentials=credentials,
        fingerprint=args.fingerprint,
        insecure=args.insecure,
        loop_audio=not args.once,
    )
    return 0


COMMANDS = {
    "rooms": cmd_rooms,
    "create": cmd_create,
    "join": cmd_join,
    "invite": cmd_invite,
    "members": cmd_members,
    "bot": cmd_bot,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "token"):
        args.token = resolve_token(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # aioquic logs a refused certificate as a warning; salon says it better, once.
        logging.getLogger("quic").setLevel(logging.ERROR)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 130
    except ServerVerificationError as exc:
        print(printable(f"salon: {exc}"), file=sys.stderr)
        return 4
    except (RequestError, ConnectionLost) as exc:
        print(printable(f"salon: {exc}"), file=sys.stderr)
        return 1
    except ServerUnreachable as exc:
        print(f"salon: cannot reach the server: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        print(
            f"salon: cannot reach the server ({reason}): check --server and that salond runs",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
