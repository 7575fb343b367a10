"""The HTTP codecs spcore ships, by name, and the choice of one (``--http``, ``http=``).

Kept apart from the interface (``spcore.http.codec``) so that each codec imports the
interface and this registry imports a codec only when it is chosen: httptools stays optional.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Final

from .codec import CodecFactory

__all__ = ["CODECS", "available_codecs", "codec_factory"]

#: The codecs spcore ships, in the order ``auto`` prefers them.
CODECS: Final = ("httptools", "h11")


@functools.cache
def _available() -> tuple[str, ...]:
    return tuple(name for name in CODECS if importlib.util.find_spec(name) is not None)


def available_codecs() -> list[str]:
    """The codecs that can run here (h11 always can), in the order ``auto`` prefers them."""
    return list(_available())


def codec_factory(name: str = "auto") -> tuple[str, CodecFactory]:
    """The codec called ``name`` ("auto", "h11", "httptools") and its name once resolved.

    Raises ``ValueError`` for an unknown name and ``ImportError`` when httptools is asked for
    but not installed.
    """
    if name == "auto":
        name = _available()[0]
    if name == "httptools":
        from .httptoolscodec import HttptoolsCodec

        return name, HttptoolsCodec
    if name == "h11":
        from .h11codec import H11Codec

        return name, H11Codec
    raise ValueError(f"unknown HTTP codec {name!r} (choose from auto, {', '.join(CODECS)})")
