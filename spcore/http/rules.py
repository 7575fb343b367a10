"""What a parsed request head must satisfy, decided once for every codec (RFC 9112, RFC 9110).

A parser (h11, llhttp) splits the bytes into a request line and header fields and checks their
syntax; the two disagree on much of the rest (one merges duplicate Content-Length headers,
the other refuses them; one takes any method token, the other a fixed list...). So each codec
hands its parsed head to ``check_head``, which makes every decision that is about meaning
rather than syntax, and both codecs answer every request alike. The decisions, with their
sections (the table in ``tests/test_http_corpus.py`` holds both codecs to them):

* The HTTP/2 preface (``PRI * HTTP/2.0``) on an HTTP/1.1 connection: 400 (RFC 9113 §3.4).
* A method outside the set llhttp knows: 400. RFC 9110 §9.1 says an unknown method SHOULD get
  501, but llhttp refuses a method by its first bytes that fit none, before it can tell an
  unknown method from a line that is no request at all, so both codecs answer 400 (as
  uvicorn's httptools mode does). CONNECT: 501, tunnels are not served.
* A version other than 1.x: 505 (RFC 9110 §15.6.6); 1.2 and later minor versions are served
  as 1.1 (RFC 9110 §2.5).
* A target longer than ``max_url_length``: 414; a head larger than ``max_header_size``: 431.
* No Host on HTTP/1.1, more than one Host, or a Host that is not ``uri-host [":" port]``: 400
  (RFC 9112 §3.2).
* A target in none of the forms (origin, absolute, ``*`` for OPTIONS): 400 (RFC 9112 §3.2).
* Content-Length: digits only, below 2**64, one value, one field (RFC 9110 §8.6, RFC 9112
  §6.3); a body larger than ``max_body_size`` is the exchange's 413.
* A request line without a version (an HTTP/0.9 simple request): 505, like HTTP/0.9 itself.
* Transfer-Encoding with Content-Length: 400, the smuggling case (RFC 9112 §6.1 allows
  rejecting); on HTTP/1.0: 400 (RFC 9112 §6.1: the framing is faulty); chunked not last, or
  twice: 400 (RFC 9112 §6.3); another coding before chunked: 501 (RFC 9112 §6.1).
* Keep-alive: HTTP/1.1 unless ``Connection: close``; HTTP/1.0 never (honouring HTTP/1.0
  keep-alive is optional, RFC 9112 §9.3; h11 does not, so neither codec does).
* ``Expect: 100-continue`` counts on HTTP/1.1 only (RFC 9110 §10.1.1); other expectations are
  ignored (a 417 is optional).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from .codec import RequestError, RequestHead

if TYPE_CHECKING:
    from ..config import Limits

__all__ = ["KNOWN_METHODS", "check_head", "split_target", "transfer_coding_error"]

#: The request methods llhttp parses (its HTTP method map, without RTSP's): a method outside
#: it is answered 400 by both codecs, so they agree. PRI only ever starts the HTTP/2 preface.
KNOWN_METHODS: Final = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)

# RFC 3986 §3.2.2: an IP literal, or a reg-name (which includes IPv4 addresses); a port.
_HOST = re.compile(
    rb"(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+)\]"
    rb"|(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)"
    rb"(?::[0-9]*)?"
)
# RFC 9112 §3.2.2: absolute-form, with the scheme, the authority and the rest apart.
_ABSOLUTE = re.compile(rb"([A-Za-z][-A-Za-z0-9+.]*)://([^/?#]*)([^#]*)")
_HOST_NAME: Final = b"host"
#: Host values already found valid (the same few come back on every request); cleared when
#: full.
_GOOD_HOSTS: set[bytes] = set()
_MAX_GOOD_HOSTS: Final = 256
#: A NamedTuple's constructor without the Python frame its generated ``__new__`` adds.
_new_head: Final = tuple.__new__
_SPECIAL: Final = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"}
)
_VERSIONS: Final = frozenset({b"1.1", b"1.0"})
#: Content-Length values from 2**64 on are refused (llhttp cannot hold them).
_LENGTH_LIMIT: Final = 1 << 64


def check_head(
    method: bytes,
    target: bytes,
    http_version: bytes,
    headers: list[tuple[bytes, bytes]],
    size: int,
    limits: Limits,
) -> RequestHead | RequestError:
    """The head's decisions (see the module docstring), or the error that answers it.

    ``headers`` has lower-case names and values without surrounding whitespace; ``size`` is
    the head's size on the wire (give or take whitespace).
    """
    if method == b"PRI":
        return RequestError(400, "this is an HTTP/1.1 server: HTTP/2 needs TLS with ALPN h2")
    if method not in KNOWN_METHODS:  # before the version: llhttp stops at the method
        return RequestError(400, "the request method is unknown to this server", method)
    if http_version not in _VERSIONS:
        if http_version[:2] != b"1.":
            return RequestError(505, f"HTTP/{http_version.decode()} is not supported", method)
        http_version = b"1.1"  # a later 1.x is served as 1.1 (RFC 9110 §2.5)
    if method == b"CONNECT":
        return RequestError(501, "CONNECT tunnels are not supported by this server", method)
    if len(target) > limits.max_url_length:
        return RequestError(414, "the request target is longer than this server accepts", method)
    if size > limits.max_header_size:
        return RequestError(431, "the request head is larger than this server accepts", method)
    if not target.startswith(b"/") and not _other_form_ok(method, target):
        return RequestError(400, "the request target is not in origin or absolute form", method)
    hosts = 0
    length: int | None = None
    codings: list[bytes] | None = None
    keep_alive = http_version == b"1.1"
    expect_continue = False
    upgrade: bytes | None = None
    wants_upgrade = False
    for name, value in headers:
        if name not in _SPECIAL:
            continue
        if name == _HOST_NAME:
            hosts += 1
            if hosts > 1 or (value not in _GOOD_HOSTS and not _valid_host(value)):
                return RequestError(400, "the request needs exactly one valid Host", method)
        elif name == b"content-length":
            if length is not None or not (value.isdigit() and value.isascii()):
                return RequestError(400, "the request has an invalid Content-Length", method)
            length = int(value)
            if length >= _LENGTH_LIMIT:
                return RequestError(400, "the request's Content-Length is out of range", method)
        elif name == b"transfer-encoding":
            codings = (codings or []) + _tokens(value)
        elif name == b"connection":
            tokens = _tokens(value)
            if b"close" in tokens:
                keep_alive = False
            wants_upgrade = wants_upgrade or b"upgrade" in tokens
        elif name == b"expect":
            expect_continue = value.lower() == b"100-continue" and http_version == b"1.1"
        else:  # upgrade
            upgrade = value
    if not hosts and http_version == b"1.1":
        return RequestError(400, "the request needs exactly one valid Host", method)
    chunked = False
    if codings is not None:
        if length is not None:
            return RequestError(
                400, "the request has both Content-Length and Transfer-Encoding", method
            )
        if http_version != b"1.1":
            return RequestError(400, "an HTTP/1.0 request cannot have Transfer-Encoding", method)
        error = transfer_coding_error(codings)
        if error is not None:
            return error._replace(method=method)
        chunked = True
    head: RequestHead = _new_head(
        RequestHead,
        (
            method,
            target,
            http_version,
            headers,
            length,
            chunked,
            keep_alive,
            expect_continue,
            upgrade if wants_upgrade else None,
        ),
    )
    return head


def transfer_coding_error(codings: Iterable[bytes]) -> RequestError | None:
    """What a request's Transfer-Encoding list (lower-case codings) must be answered with,
    or None when it is plain ``chunked`` (RFC 9112 §6.1, §6.3)."""
    codings = list(codings)
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        return RequestError(400, "the request's Transfer-Encoding does not end in chunked")
    if len(codings) > 1:
        return RequestError(501, "only the chunked transfer coding is implemented")
    return None


def split_target(target: str) -> tuple[str, str]:
    """``(path, query)`` of a request target: an absolute-form target gives its path
    (RFC 9112 §3.2.2: the server MUST accept it), ``*`` gives itself."""
    if target[:1] != "/":
        match = _ABSOLUTE.fullmatch(target.encode("latin-1"))
        if match is None:
            return target, ""
        target = match.group(3).decode("latin-1") or "/"
    path, _, query = target.partition("?")
    return path, query


def _valid_host(value: bytes) -> bool:
    if _HOST.fullmatch(value) is None:
        return False
    if len(_GOOD_HOSTS) >= _MAX_GOOD_HOSTS:
        _GOOD_HOSTS.clear()
    _GOOD_HOSTS.add(value)
    return True


def _other_form_ok(method: bytes, target: bytes) -> bool:
    if target == b"*":
        return method == b"OPTIONS"  # RFC 9112 §3.2.4
    match = _ABSOLUTE.fullmatch(target)
    return (
        match is not None
        and match.group(1).lower() in (b"http", b"https")
        and _HOST.fullmatch(match.group(2)) is not None
        and match.group(2) != b""
        and match.group(3)[:1] in (b"", b"/", b"?")
    )


def _tokens(value: bytes) -> list[bytes]:
    """A comma-separated list field's members, lower-case (RFC 9110 §5.6.1)."""
    return [part for part in (p.strip(b" \t").lower() for p in value.split(b",")) if part]
