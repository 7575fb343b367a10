"""Stream framings: SPServer-style message decoders for non-HTTP stream protocols.

A framing turns the plaintext of a stream into messages and one outgoing message into bytes.
The stream handler (line echo, chat) only sees the `Framing` interface, so an application can
bring its own. The framings here bound the bytes they hold (a peer that never sends a
terminator is cut off as soon as its message is certainly too long, not when memory runs
out) and never rescan what they have already searched, so a long message arriving a byte at a
time costs linear time.
"""

from __future__ import annotations

import abc
from typing import Protocol

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DotFraming",
    "Framing",
    "FramingError",
    "LengthPrefixFraming",
    "LineFraming",
    "RawFraming",
]

_CR = 13


class FramingError(RemoteProtocolError):
    """The peer's bytes break the framing (too long, truncated, malformed).

    ``messages`` holds the messages that were complete before the violation in the same
    ``feed`` call: they are valid and should still be delivered.
    """

    def __init__(self, msg: str, messages: list[bytes] | None = None) -> None:
        super().__init__(msg)
        self.messages: list[bytes] = messages or []


class Framing(Protocol):
    """What the stream handler needs from a message decoder/encoder."""

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes; return the messages they complete, in order."""
        ...

    def frame(self, message: bytes) -> bytes:
        """Encode one outgoing message."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message (counted against the connection's memory)."""
        ...

    def eof(self) -> None:
        """The stream ended; raise `FramingError` if that truncated a message."""
        ...


class _BufferedFraming(abc.ABC):
    """Buffering, size limit and failure handling shared by the delimiter and length framings.

    After a `FramingError` the framing drops what it holds and refuses further input: the
    stream is out of sync and the connection is about to be closed.
    """

    _unit = "message"

    def __init__(self, max_length: int) -> None:
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        self._max_length = max_length
        self._buf = bytearray()
        self._failure: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._failure is not None:
            raise FramingError(f"input after a framing error ({self._failure})")
        if not data:
            return []
        self._buf += data
        messages: list[bytes] = []
        try:
            self._parse(messages)
        except FramingError as exc:
            self._failure = str(exc)
            self._buf.clear()
            exc.messages = messages
            raise
        return messages

    def eof(self) -> None:
        if self._buf:
            raise FramingError(
                f"the stream ended inside an incomplete {self._unit} ({len(self._buf)} bytes)"
            )

    @abc.abstractmethod
    def _parse(self, messages: list[bytes]) -> None:
        """Cut the complete messages off the front of ``self._buf`` into ``messages``."""

    def _too_long(self, length: int) -> FramingError:
        return FramingError(f"{self._unit} longer than {self._max_length} bytes ({length} or more)")


class _DelimitedFraming(_BufferedFraming):
    """Messages that end with a delimiter, searched for incrementally.

    ``_scan`` is where the next search starts: just before the end of the data already
    searched, far enough back to catch a delimiter split across two chunks.
    """

    _delimiter: bytes
    #: What may end the body of a message: a prefix of it at the end of the buffer may still
    #: turn out not to be part of the message, so it does not count against the limit yet.
    _ending: bytes

    def __init__(self, max_length: int) -> None:
        super().__init__(max_length)
        self._scan = 0

    def _parse(self, messages: list[bytes]) -> None:
        buf = self._buf
        start = 0
        with memoryview(buf) as view:
            while True:
                special = self._empty_message_at(start)
                if special:
                    messages.append(b"")
                    start += special
                    self._scan = max(self._scan, start)
                    continue
                end = buf.find(self._delimiter, self._scan)
                if end < 0:
                    break
                body_end = self._body_end(start, end)
                if body_end - start > self._max_length:
                    raise self._too_long(body_end - start)
                messages.append(self._decode(bytes(view[start:body_end])))
                start = end + len(self._delimiter)
                self._scan = start
        pending = len(buf) - start
        if pending - _partial_suffix(buf, start, self._ending) > self._max_length:
            raise self._too_long(pending)
        self._scan = max(start, len(buf) - len(self._delimiter) + 1) - start
        del buf[:start]

    def _empty_message_at(self, start: int) -> int:
        """Length of a special form of the empty message at ``start`` (0: there is none)."""
        return 0

    def _body_end(self, start: int, end: int) -> int:
        """Where the body ends, given the delimiter found at ``end``."""
        return end

    def _decode(self, body: bytes) -> bytes:
        """Undo any transformation the sender applied to the body."""
        return body


class LineFraming(_DelimitedFraming):
    """Lines ending with ``terminator`` (by default LF, with an optional CR before it).

    Messages are the lines without their terminator (and without the CR of a CRLF); `frame`
    ends lines with CRLF. ``max_length`` bounds a line without its terminator.
    """

    _unit = "line"

    def __init__(self, max_length: int = 8192, terminator: bytes = b"\n") -> None:
        if not terminator:
            raise ValueError("the line terminator must not be empty")
        super().__init__(max_length)
        self._delimiter = terminator
        self._strip_cr = terminator == b"\n"
        self._ending = self._outgoing_end = b"\r\n" if self._strip_cr else terminator

    def frame(self, message: bytes) -> bytes:
        if self._delimiter in message:
            raise LocalProtocolError("a line to send must not contain the line terminator")
        return message + self._outgoing_end

    def _body_end(self, start: int, end: int) -> int:
        if self._strip_cr and end > start and self._buf[end - 1] == _CR:
            return end - 1
        return end


class DotFraming(_DelimitedFraming):
    """SMTP DATA style: a message ends with a line holding a single dot.

    On the wire a message is its dot-stuffed body followed by ``CRLF . CRLF``; the CRLF before
    the dot belongs to the terminator. A lone ``. CRLF`` where a message starts is the empty
    message. Unstuffing follows RFC 5321 section 4.5.2: a line that starts with a dot loses
    that dot. ``max_length`` bounds the body as sent (before unstuffing), which is what is held
    in memory.
    """

    _delimiter = b"\r\n.\r\n"
    _ending = _delimiter
    _empty = b".\r\n"

    def __init__(self, max_length: int = 1024 * 1024) -> None:
        super().__init__(max_length)

    def frame(self, message: bytes) -> bytes:
        if not message:
            return self._empty
        stuffed = message.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        return stuffed + self._delimiter

    def _empty_message_at(self, start: int) -> int:
        return len(self._empty) if self._buf.startswith(self._empty, start) else 0

    def _decode(self, body: bytes) -> bytes:
        body = body.replace(b"\r\n.", b"\r\n")
        return body[1:] if body.startswith(b".") else body


class LengthPrefixFraming(_BufferedFraming):
    """Each message is a big-endian unsigned length of ``header_size`` bytes, then the payload.

    An announced length above ``max_length`` is refused as soon as the header arrives.
    """

    def __init__(self, header_size: int = 4, max_length: int = 16 * 1024 * 1024) -> None:
        if header_size not in (1, 2, 4, 8):
            raise ValueError("header_size must be 1, 2, 4 or 8")
        super().__init__(max_length)
        self._header_size = header_size

    def frame(self, message: bytes) -> bytes:
        if len(message) >> (8 * self._header_size):
            raise LocalProtocolError(
                f"a {len(message)}-byte message does not fit a {self._header_size}-byte length"
            )
        return len(message).to_bytes(self._header_size, "big") + message

    def _parse(self, messages: list[bytes]) -> None:
        buf = self._buf
        header = self._header_size
        start = 0
        with memoryview(buf) as view:
            while len(buf) - start >= header:
                length = int.from_bytes(view[start : start + header], "big")
                if length > self._max_length:
                    raise FramingError(
                        f"length prefix announces {length} bytes, more than the limit of "
                        f"{self._max_length}"
                    )
                end = start + header + length
                if end > len(buf):
                    break
                messages.append(bytes(view[start + header : end]))
                start = end
        del buf[:start]


class RawFraming:
    """No framing: every chunk is a message, as it arrived."""

    @property
    def buffered(self) -> int:
        return 0

    def feed(self, data: bytes) -> list[bytes]:
        return [bytes(data)] if data else []

    def frame(self, message: bytes) -> bytes:
        return bytes(message)

    def eof(self) -> None:
        return None


def _partial_suffix(buf: bytearray, start: int, ending: bytes) -> int:
    """Length of the longest end of ``buf[start:]`` that is a proper prefix of ``ending``."""
    for size in range(min(len(ending) - 1, len(buf) - start), 0, -1):
        if buf.endswith(ending[:size], start):
            return size
    return 0
