"""The ``Date`` header value (RFC 9110 §6.6.1), made once per second rather than per response."""

from __future__ import annotations

import email.utils

__all__ = ["DateCache"]


class DateCache:
    """The IMF-fixdate of a Unix time, recomputed only when the second changes."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self, wall_time: float) -> bytes:
        second = int(wall_time)
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(second, usegmt=True).encode("ascii")
        return self._value
