"""PROTOCOL.md documents every control message of ``salon/1``, exactly as messages.py defines it.

The checks are strict on purpose: adding a request, an event, a field or an error code to
``salon.daemon.wire.messages`` without documenting it fails here, and so does documentation of
something that no longer exists. Field tables must give each field's type (and, for requests,
its default) as the schema has it, and every JSON example must decode with the real decoders.
"""

from __future__ import annotations

import base64
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import msgspec
import pytest

from salon.daemon.wire import messages

DOC_PATH = Path(__file__).resolve().parent.parent / "PROTOCOL.md"

REQUESTS_TITLE = "Requests"
EVENTS_TITLE = "Events"
SHARED_TITLE = "Shared objects"
CONTROL_TITLE = "Control stream"
ERRORS_TITLE = "Errors and connection close codes"

HEADING_NAME = re.compile(r"^`([A-Za-z_][A-Za-z0-9_]*)`$")
BACKTICKED = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


# --------------------------------------------------------------------------- document model


@dataclass
class Section:
    """A heading and the lines under it, up to the next heading of the same or higher level."""

    title: str
    lines: list[str] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def parse_document(text: str) -> list[Section]:
    """Level-2 sections, each with its level-3 subsections; headings inside code are ignored."""
    sections: list[Section] = []
    current2: Section | None = None
    current3: Section | None = None
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("## "):
            current2 = Section(line[3:].strip())
            current3 = None
            sections.append(current2)
            continue
        if not in_code and line.startswith("### ") and current2 is not None:
            current3 = Section(line[4:].strip())
            current2.children.append(current3)
            continue
        if current3 is not None:
            current3.lines.append(line)
        elif current2 is not None:
            current2.lines.append(line)
    return sections


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(lines: list[str]) -> list[tuple[list[str], list[list[str]]]]:
    """Markdown tables outside code blocks, as (header cells, body rows)."""
    found: list[tuple[list[str], list[list[str]]]] = []
    in_code = False
    block: list[str] = []
    for line in [*lines, ""]:
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.strip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2:
            found.append((split_row(block[0]), [split_row(row) for row in block[2:]]))
        block = []
    return found


def json_blocks(lines: list[str]) -> list[Any]:
    """The parsed contents of the ```json code blocks."""
    blocks: list[Any] = []
    current: list[str] | None = None
    for line in lines:
        if current is None and line.strip() == "```json":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append(json.loads("\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, "unterminated ```json block"
    return blocks


def paragraph(lines: list[str], label: str) -> str | None:
    """The paragraph that starts with ``**label:**``, joined into one line."""
    for index, line in enumerate(lines):
        if line.startswith(f"**{label}:**"):
            collected = [line]
            for following in lines[index + 1 :]:
                if not following.strip():
                    break
                collected.append(following)
            return " ".join(collected)
    return None


def clean_cell(cell: str) -> str:
    return " ".join(LINK.sub(r"\1", cell).replace("`", "").split())


def heading_name(section: Section) -> str | None:
    match = HEADING_NAME.match(section.title)
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def doc() -> list[Section]:
    return parse_document(DOC_PATH.read_text(encoding="utf-8"))


def top_section(doc: list[Section], title: str) -> Section:
    matching = [s for s in doc if re.fullmatch(rf"\d+\. {re.escape(title)}", s.title)]
    assert len(matching) == 1, f"expected one section '## N. {title}', found {len(matching)}"
    return matching[0]


def subsection(doc: list[Section], title: str, name: str) -> Section:
    parent = top_section(doc, title)
    matching = [child for child in parent.children if child.title == f"`{name}`"]
    assert matching, f"section '{title}' has no heading ### `{name}`"
    assert len(matching) == 1, f"section '{title}' documents `{name}` {len(matching)} times"
    return matching[0]


# --------------------------------------------------------------------------- schema model


def render_type(annotation: Any) -> str:
    """A field's type as PROTOCOL.md writes it (see its section 1.3)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if origin is Annotated:
        return render_type(args[0])
    if annotation in simple:
        return simple[annotation]
    if annotation is type(None):
        return "null"
    if origin is Union or origin is types.UnionType:
        return " or ".join(render_type(arg) for arg in args)
    if origin is Literal:
        return "enum (" + ", ".join(json.dumps(value) for value in args) + ")"
    if origin is list:
        return "array of " + render_type(args[0])
    if origin is dict:
        return "object" if args[1] is Any else "object of " + render_type(args[1])
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation.__name__
    raise AssertionError(f"no documented rendering for type {annotation!r}")


def schema_fields(cls: type[msgspec.Struct]) -> list[msgspec.structs.FieldInfo]:
    return [info for info in msgspec.structs.fields(cls) if info.name != "id"]


def presence(info: msgspec.structs.FieldInfo) -> str:
    if info.required:
        return "required"
    default = info.default if info.default is not msgspec.NODEFAULT else info.default_factory()
    return "default " + json.dumps(default)


def shared_structs() -> dict[str, type[msgspec.Struct]]:
    """Public untagged structs of messages.py: the shared objects of section 8."""
    found: dict[str, type[msgspec.Struct]] = {}
    for name, value in vars(messages).items():
        if (
            isinstance(value, type)
            and issubclass(value, msgspec.Struct)
            and value.__module__ == messages.__name__
            and not name.startswith("_")
            and value.__struct_config__.tag is None
        ):
            found[name] = value
    return found


def check_field_table(section: Section, cls: type[msgspec.Struct], with_presence: bool) -> None:
    """The section's one ``| Field | ...`` table lists exactly the struct's fields, in order."""
    expected = schema_fields(cls)
    field_tables = [(head, rows) for head, rows in tables(section.lines) if head[0] == "Field"]
    if not expected:
        assert not field_tables, f"{section.title}: has no fields but documents a field table"
        assert "Fields: none" in section.text, f"{section.title}: should say 'Fields: none'"
        return
    assert len(field_tables) == 1, f"{section.title}: expected one field table"
    header, rows = field_tables[0]
    columns = ["Field", "Type", "Presence", "Meaning"] if with_presence else ["Field", "Type"]
    assert header[: len(columns)] == columns, f"{section.title}: table header {header}"
    names = []
    for row in rows:
        match = re.fullmatch(r"`([a-z_]+)`", row[0])
        assert match, f"{section.title}: field cell {row[0]!r} is not a backticked name"
        names.append(match.group(1))
    assert names == [info.name for info in expected], (
        f"{section.title}: documented fields {names} != schema {[i.name for i in expected]}"
    )
    for row, info in zip(rows, expected, strict=True):
        assert clean_cell(row[1]) == render_type(info.type), (
            f"{section.title}: `{info.name}` type {row[1]!r}, schema: {render_type(info.type)!r}"
        )
        if with_presence:
            assert clean_cell(row[2]) == presence(info), (
                f"{section.title}: `{info.name}` presence {row[2]!r}, schema: {presence(info)!r}"
            )
        assert row[-1].strip(), f"{section.title}: `{info.name}` has no meaning"


# --------------------------------------------------------------------------- result shapes


class HelloResult(msgspec.Struct, forbid_unknown_fields=True):
    session: int
    user: str
    display_name: str
    server: str
    version: str
    limits: messages.Limits
    nodes: list[messages.NodeAddress] = []


class RoomsResult(msgspec.Struct, forbid_unknown_fields=True):
    rooms: list[messages.RoomSummary]


class RoomResult(msgspec.Struct, forbid_unknown_fields=True):
    room: messages.RoomSummary


class Joined(msgspec.Struct, tag="joined", tag_field="status", forbid_unknown_fields=True):
    role: messages.Role
    room: messages.RoomSummary


class Knocking(msgspec.Struct, tag="knocking", tag_field="status", forbid_unknown_fields=True):
    request_id: str
    expires_at: float


class Redirected(msgspec.Struct, tag="redirect", tag_field="status", forbid_unknown_fields=True):
    server: str
    fingerprint: str
    node: str


class UserResult(msgspec.Struct, forbid_unknown_fields=True):
    user: str


class InviteResult(msgspec.Struct, forbid_unknown_fields=True):
    invite: messages.InviteInfo


class InvitesResult(msgspec.Struct, forbid_unknown_fields=True):
    invites: list[messages.InviteInfo]


class ParticipantsResult(msgspec.Struct, forbid_unknown_fields=True):
    participants: list[messages.Participant]
    media_keys: list[messages.MediaKey]
    next: str | None
    total: int


class RecordingResult(msgspec.Struct, forbid_unknown_fields=True):
    recording: str


class ConsentResult(msgspec.Struct, forbid_unknown_fields=True):
    consent: bool
    recording: str


# The ``result`` of each request's ``ok``; every request not named here returns ``{}``.
RESULTS: dict[str, Any] = {
    "hello": HelloResult,
    "list_rooms": RoomsResult,
    "get_room": RoomResult,
    "create_room": RoomResult,
    "start_room": RoomResult,
    "join": Joined | Knocking | Redirected,
    "approve_knock": UserResult,
    "create_invite": InviteResult,
    "list_invites": InvitesResult,
    "list_participants": ParticipantsResult,
    "start_recording": RecordingResult,
    "stop_recording": RecordingResult,
    "recording_consent": ConsentResult,
}


def result_field_names(request_type: str) -> list[str]:
    shape = RESULTS[request_type]
    names: list[str] = []
    for cls in typing.get_args(shape) or (shape,):
        if cls.__struct_config__.tag_field is not None:
            names.append(cls.__struct_config__.tag_field)
        names.extend(name for name in cls.__struct_fields__ if name not in names)
    return list(dict.fromkeys(names))


def result_field_types(request_type: str) -> dict[str, str]:
    """Each result field's type as PROTOCOL.md writes it; a tagged union's tag is an enum."""
    shape = RESULTS[request_type]
    members = typing.get_args(shape) or (shape,)
    found: dict[str, str] = {}
    tags = [cls.__struct_config__.tag for cls in members if cls.__struct_config__.tag_field]
    if tags:
        found[members[0].__struct_config__.tag_field] = render_type(Literal[tuple(tags)])
    for cls in members:
        for info in msgspec.structs.fields(cls):
            found.setdefault(info.name, render_type(info.type))
    return found


def vocabulary(doc: list[Section]) -> set[str]:
    """Names an **Events:** paragraph may put in backticks: message types, field names, enum
    values, and the reason values documented in the Events section's tables."""
    words = set(messages.EVENT_TYPES) | set(messages.REQUEST_TYPES)
    structs = [*shared_structs().values(), *messages.EVENT_TYPES.values()]
    for cls in [*structs, *messages.REQUEST_TYPES.values()]:
        for info in msgspec.structs.fields(cls):
            words.add(info.name)
            words.update(literal_values(info.type))
    for child in top_section(doc, EVENTS_TITLE).children:
        for _head, rows in tables(child.lines):
            for row in rows:
                words.update(BACKTICKED.findall(row[-1]))
    return words


def literal_values(annotation: Any) -> set[str]:
    if typing.get_origin(annotation) is Literal:
        return {str(value) for value in typing.get_args(annotation)}
    found: set[str] = set()
    for arg in typing.get_args(annotation):
        found |= literal_values(arg)
    return found


# --------------------------------------------------------------------------- requests


def test_every_request_type_has_a_heading(doc: list[Section]) -> None:
    documented = [heading_name(c) for c in top_section(doc, REQUESTS_TITLE).children]
    missing = sorted(set(messages.REQUEST_TYPES) - set(documented))
    assert not missing, f"requests not documented in PROTOCOL.md: {missing}"


def test_request_headings_name_real_requests(doc: list[Section]) -> None:
    children = top_section(doc, REQUESTS_TITLE).children
    names = [heading_name(child) for child in children]
    stale = [
        c.title for c, n in zip(children, names, strict=True) if n not in messages.REQUEST_TYPES
    ]
    assert not stale, f"headings in Requests that are not request types: {stale}"
    assert len(names) == len(set(names)), "a request is documented twice"


def test_request_summary_lists_every_request(doc: list[Section]) -> None:
    summary = [rows for head, rows in tables(top_section(doc, REQUESTS_TITLE).lines)]
    assert summary, "the Requests section starts with a summary table"
    listed = [clean_cell(row[0]) for row in summary[0]]
    assert listed == list(messages.REQUEST_TYPES), "summary table != REQUEST_TYPES (order too)"


@pytest.mark.parametrize("request_type", list(messages.REQUEST_TYPES))
def test_request_fields(doc: list[Section], request_type: str) -> None:
    section = subsection(doc, REQUESTS_TITLE, request_type)
    check_field_table(section, messages.REQUEST_TYPES[request_type], with_presence=True)


@pytest.mark.parametrize("request_type", list(messages.REQUEST_TYPES))
def test_request_parts(doc: list[Section], request_type: str) -> None:
    section = subsection(doc, REQUESTS_TITLE, request_type)
    for label in ("Sent by", "Result", "Events", "Errors"):
        assert paragraph(section.lines, label), f"`{request_type}` lacks **{label}:**"
    errors = paragraph(section.lines, "Errors") or ""
    named = BACKTICKED.findall(errors)
    codes = {code.value for code in messages.ErrorCode}
    assert set(named) <= codes, f"`{request_type}` names unknown error codes {set(named) - codes}"
    assert named or "none besides the common ones" in errors, f"`{request_type}`: errors?"
    events = paragraph(section.lines, "Events") or ""
    named = BACKTICKED.findall(events)
    assert set(named) & set(messages.EVENT_TYPES) or "**Events:** none" in events, (
        f"`{request_type}` **Events:** names no event type and does not say 'none'"
    )
    unknown = set(named) - vocabulary(doc)
    assert not unknown, f"`{request_type}` **Events:** names unknown things {sorted(unknown)}"


@pytest.mark.parametrize("request_type", list(messages.REQUEST_TYPES))
def test_request_result_documented(doc: list[Section], request_type: str) -> None:
    section = subsection(doc, REQUESTS_TITLE, request_type)
    result_tables = [rows for head, rows in tables(section.lines) if head[0] == "Result field"]
    if request_type not in RESULTS:
        assert not result_tables, f"`{request_type}` returns {{}} but documents result fields"
        assert (paragraph(section.lines, "Result") or "").startswith("**Result:** `{}`")
        return
    assert len(result_tables) == 1, f"`{request_type}` needs one '| Result field |' table"
    names = [clean_cell(row[0]) for row in result_tables[0]]
    assert names == result_field_names(request_type), f"`{request_type}` result fields {names}"
    types_ = result_field_types(request_type)
    for row in result_tables[0]:
        name = clean_cell(row[0])
        assert clean_cell(row[1]) == types_[name], (
            f"`{request_type}` result `{name}` type {row[1]!r}, server sends {types_[name]!r}"
        )


@pytest.mark.parametrize("request_type", list(messages.REQUEST_TYPES))
def test_request_examples_decode(doc: list[Section], request_type: str) -> None:
    section = subsection(doc, REQUESTS_TITLE, request_type)
    blocks = json_blocks(section.lines)
    requests = [b for b in blocks if b.get("type") == request_type]
    replies = [b for b in blocks if b.get("type") in ("ok", "error")]
    assert requests, f"`{request_type}` has no JSON example of the request"
    assert replies, f"`{request_type}` has no JSON example of the reply"
    assert len(requests) + len(replies) == len(blocks), f"`{request_type}`: stray JSON example"
    ids = set()
    for example in requests:
        decoded = messages.decode_request(json.dumps(example).encode())
        assert isinstance(decoded, messages.REQUEST_TYPES[request_type])
        ids.add(decoded.id)
    shape = RESULTS.get(request_type)
    for example in replies:
        reply = messages.decode_server_message(json.dumps(example).encode())
        assert reply.re in ids, f"`{request_type}` reply answers no example request"
        if isinstance(reply, messages.Ok):
            if shape is None:
                assert reply.result == {}, f"`{request_type}` returns {{}}"
            else:
                # Strict: an example showing 50.0 for an integer, or "50" for a number, fails.
                msgspec.convert(reply.result, shape, strict=True)
        else:
            assert reply.code in {code.value for code in messages.ErrorCode}


def test_hello_example_limits_match_the_code(doc: list[Section]) -> None:
    blocks = json_blocks(subsection(doc, REQUESTS_TITLE, "hello").lines)
    result = next(b["result"] for b in blocks if b["type"] == "ok")
    assert result["version"] == messages.PROTOCOL_VERSION
    assert result["limits"]["max_message_size"] == messages.MAX_MESSAGE_SIZE


# --------------------------------------------------------------------------- events


def test_every_event_type_has_a_heading(doc: list[Section]) -> None:
    documented = [heading_name(c) for c in top_section(doc, EVENTS_TITLE).children]
    missing = sorted(set(messages.EVENT_TYPES) - set(documented))
    assert not missing, f"events not documented in PROTOCOL.md: {missing}"


def test_event_headings_name_real_events(doc: list[Section]) -> None:
    children = top_section(doc, EVENTS_TITLE).children
    names = [heading_name(child) for child in children]
    stale = [c.title for c, n in zip(children, names, strict=True) if n not in messages.EVENT_TYPES]
    assert not stale, f"headings in Events that are not event types: {stale}"
    assert len(names) == len(set(names)), "an event is documented twice"


@pytest.mark.parametrize("event_type", list(messages.EVENT_TYPES))
def test_event_fields(doc: list[Section], event_type: str) -> None:
    section = subsection(doc, EVENTS_TITLE, event_type)
    check_field_table(section, messages.EVENT_TYPES[event_type], with_presence=False)
    for label in ("Sent to", "When"):
        assert paragraph(section.lines, label), f"`{event_type}` lacks **{label}:**"


@pytest.mark.parametrize("event_type", list(messages.EVENT_TYPES))
def test_event_examples_decode(doc: list[Section], event_type: str) -> None:
    section = subsection(doc, EVENTS_TITLE, event_type)
    blocks = json_blocks(section.lines)
    assert blocks, f"`{event_type}` has no JSON example"
    cls = messages.EVENT_TYPES[event_type]
    for example in blocks:
        decoded = messages.decode_server_message(json.dumps(example).encode())
        assert isinstance(decoded, cls), f"`{event_type}` example decodes as {type(decoded)}"
        assert set(example) == {"type", *cls.__struct_fields__}, (
            f"`{event_type}` example should show every field, as the server sends them all"
        )


# --------------------------------------------------------------------------- shared objects


def test_every_shared_object_has_a_heading(doc: list[Section]) -> None:
    children = top_section(doc, SHARED_TITLE).children
    names = [heading_name(child) for child in children]
    expected = shared_structs()
    assert set(names) == set(expected), (
        f"shared objects: missing {sorted(set(expected) - set(names))}, "
        f"stale {sorted(str(n) for n in set(names) - set(expected))}"
    )
    assert len(names) == len(set(names)), "a shared object is documented twice"


@pytest.mark.parametrize("name", sorted(shared_structs()))
def test_shared_object_fields(doc: list[Section], name: str) -> None:
    cls = shared_structs()[name]
    section = subsection(doc, SHARED_TITLE, name)
    check_field_table(section, cls, with_presence=False)
    blocks = json_blocks(section.lines)
    assert blocks, f"`{name}` has no JSON example"
    for example in blocks:
        msgspec.json.decode(json.dumps(example).encode(), type=cls)
        assert set(example) == set(cls.__struct_fields__), f"`{name}` example lacks fields"


# --------------------------------------------------------------------------- replies, errors


@pytest.mark.parametrize("cls", [messages.Ok, messages.Error])
def test_reply_messages_documented(doc: list[Section], cls: type[msgspec.Struct]) -> None:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    section = subsection(doc, CONTROL_TITLE, tag)
    check_field_table(section, cls, with_presence=False)
    blocks = json_blocks(section.lines)
    assert blocks, f"`{tag}` has no JSON example"
    for example in blocks:
        assert isinstance(messages.decode_server_message(json.dumps(example).encode()), cls)


def test_error_table_lists_every_error_code(doc: list[Section]) -> None:
    section = top_section(doc, ERRORS_TITLE)
    code_tables = [rows for head, rows in tables(section.lines) if head[0] == "Code"]
    for child in section.children:
        code_tables += [rows for head, rows in tables(child.lines) if head[0] == "Code"]
    assert len(code_tables) == 1, "expected one '| Code | Meaning | ... |' table"
    documented = []
    for row in code_tables[0]:
        match = re.fullmatch(r"`([a-z_]+)`", row[0])
        assert match, f"error code cell {row[0]!r} is not a backticked code"
        documented.append(match.group(1))
        assert row[1].strip(), f"error code {row[0]} has no meaning"
    values = [code.value for code in messages.ErrorCode]
    assert sorted(set(values) - set(documented)) == [], "error codes missing from PROTOCOL.md"
    assert sorted(set(documented) - set(values)) == [], "PROTOCOL.md lists unknown error codes"
    assert len(documented) == len(set(documented)), "an error code is listed twice"


def test_error_examples_use_real_codes(doc: list[Section]) -> None:
    """Every ``error`` example anywhere in the document carries a real error code."""
    codes = {code.value for code in messages.ErrorCode}
    for section in doc:
        for part in [section, *section.children]:
            for block in json_blocks(part.lines):
                if isinstance(block, dict) and block.get("type") == "error":
                    assert block["code"] in codes, f"{part.title}: unknown code {block['code']}"


def test_protocol_version_is_the_documented_one() -> None:
    first_line = DOC_PATH.read_text(encoding="utf-8").splitlines()[0]
    assert f"`{messages.PROTOCOL_VERSION}`" in first_line


# --------------------------------------------------------------------------- media example


def test_media_test_vector_decrypts_with_the_documented_key() -> None:
    """The worked datagram of the Media section is real: parse it, then decrypt it."""
    pylibsrtp = pytest.importorskip("pylibsrtp")
    from salon.daemon.wire.rtp import peek_media

    text = DOC_PATH.read_text(encoding="utf-8")
    vector = re.search(r"Test vector:.*?```\n(.*?)```", text, re.S)
    assert vector, "the Media section gives a test vector"
    datagram = bytes.fromhex(vector.group(1))
    header = peek_media(datagram)
    assert (header.flow_id, header.ssrc, header.sequence_number) == (5, 0x1234ABCD, 1)
    assert (header.timestamp, header.level) == (960, 5)
    key = re.search(r"the key of the examples,\s*`([A-Za-z0-9+/=]+)`", text)
    assert key, "the worked example names its key"
    policy = pylibsrtp.Policy(
        key=base64.b64decode(key.group(1)),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    )
    clear = pylibsrtp.Session(policy=policy).unprotect(datagram[1:])
    assert clear == datagram[1:21] + bytes.fromhex("f8fffe")
