"""spcore: a sans-IO TLS and HTTP/1.1 server core driven by interchangeable I/O drivers.

The core (this package) turns bytes into protocol events and back without ever touching a
socket, a thread or a clock; drivers (``spcore.drivers``) move the bytes.
"""

from pathlib import Path as _Path

from . import actions
from .config import Limits
from .connection import Connection, Hub
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .framing import DotFraming, Framing, LengthPrefixFraming, LineFraming, RawFraming
from .http.messages import BodyReader, Pipe, Request, Response, blocking, buffered
from .http.protocol import HTTPProtocol
from .jobs import Job
from .listeners import http_listener, stream_listener
from .server import Listener, Server, Stats
from .stream import Session, Sessions, StreamHandler, StreamProtocol

__version__ = "0.1.0"

# A source checkout keeps ``drivers/`` beside this package, and installing maps it to
# ``spcore.drivers`` (pyproject's package-dir). When this package is imported from a checkout
# rather than from the install (``python -m spcore`` run in the checkout's root puts it first
# on sys.path), ``spcore.drivers`` is found beside it all the same.
_HERE = _Path(__file__).parent
if not (_HERE / "drivers").is_dir() and (_HERE.parent / "drivers" / "__init__.py").is_file():
    __path__.append(str(_HERE.parent))

__all__ = [
    "BodyReader",
    "Connection",
    "DotFraming",
    "Framing",
    "HTTPProtocol",
    "Hub",
    "Job",
    "LengthPrefixFraming",
    "Limits",
    "LineFraming",
    "Listener",
    "LocalProtocolError",
    "Pipe",
    "ProtocolError",
    "RawFraming",
    "RemoteProtocolError",
    "Request",
    "Response",
    "Server",
    "Session",
    "Sessions",
    "Stats",
    "StreamHandler",
    "StreamProtocol",
    "actions",
    "blocking",
    "buffered",
    "http_listener",
    "stream_listener",
]
