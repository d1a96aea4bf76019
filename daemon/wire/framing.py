"""Control stream framing: each message is a QUIC varint length followed by that many bytes.

The bytes are one UTF-8 JSON message (see :mod:`salon.daemon.wire.messages`); this module only
delimits them and bounds their size.
"""

from __future__ import annotations

from .errors import WireError
from .messages import MAX_MESSAGE_SIZE
from .varint import encode_varint


def frame_message(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    if len(payload) > MAX_MESSAGE_SIZE:
        raise WireError(f"control message of {len(payload)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return encode_varint(len(payload)) + payload


class MessageReader:
    """Reassembles framed messages from stream data arriving in arbitrary pieces.

    After a :class:`WireError` the stream is unusable (message boundaries are lost) and every
    further :meth:`feed` raises it again.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: WireError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add stream ``data``; return the payloads it completes, in order.

        An announced length above the maximum raises as soon as the length prefix is complete,
        without waiting for (or buffering) the body.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        pos = 0
        available = len(buffer)
        while pos < available:
            prefix = 1 << (buffer[pos] >> 6)
            start = pos + prefix
            if start > available:
                break
            length = int.from_bytes(buffer[pos:start], "big") & ((1 << (8 * prefix - 2)) - 1)
            if length > MAX_MESSAGE_SIZE:
                del buffer[:]
                self._error = WireError(
                    f"control message of {length} bytes exceeds {MAX_MESSAGE_SIZE}"
                )
                raise self._error
            end = start + length
            if end > available:
                break
            messages.append(bytes(buffer[start:end]))
            pos = end
        if pos:
            del buffer[:pos]
        return messages
