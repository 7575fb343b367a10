"""The ``Date`` header (RFC 9110 §6.6.1), made once per second rather than per response."""

from __future__ import annotations

import email.utils

__all__ = ["DateCache"]


class DateCache:
    """The ``(b"date", IMF-fixdate)`` header of a Unix time, made again only when the second
    changes (the same pair object all second long, so later steps can recognise it)."""

    __slots__ = ("_header", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._header = (b"date", b"")

    def __call__(self, wall_time: float) -> tuple[bytes, bytes]:
        second = int(wall_time)
        if second != self._second:
            self._second = second
            self._header = (b"date", email.utils.formatdate(second, usegmt=True).encode("ascii"))
        return self._header
