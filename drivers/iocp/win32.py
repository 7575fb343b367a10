"""Win32 I/O completion port bindings through ctypes, behind one ``Win32Api`` object.

The IOCP driver makes every Win32 call through the object ``load()`` returns, so the same driver
code runs on Linux against the test double in ``tests/iocp_double`` (which implements
``Win32Api`` on real sockets). Everything here imports and type-checks on any platform; only
``load()`` touches ``ctypes.WinDLL``, and only on Windows.

Facts checked against Microsoft's documentation (learn.microsoft.com pages of each function and
structure), mswsock.h / winsock2.h / winerror.h as published, and the RtlNtStatusToDosError
table of Wine/ReactOS: the signatures in ``SIGNATURES``, the x64 layouts asserted below, the
extension GUIDs, SO_UPDATE_*_CONTEXT, SIO_GET_EXTENSION_FUNCTION_POINTER, the NTSTATUS values
and their conversions, and the Windows values of SOL_SOCKET (0xFFFF) and AF_INET6 (23, not
Linux's 10).
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
import uuid
from typing import Any, Protocol, TypeAlias, cast

# -- Types with the exact x64 widths (c_ulong is 64-bit on Linux: never use it here) -----------

HANDLE = ctypes.c_void_p
SOCKET = ctypes.c_size_t  # UINT_PTR
ULONG_PTR = ctypes.c_size_t
DWORD = ctypes.c_uint32
ULONG = ctypes.c_uint32
BOOL = ctypes.c_int32
INT = ctypes.c_int32
UCHAR = ctypes.c_uint8
NTSTATUS = ctypes.c_int32  # LONG
LPVOID = ctypes.c_void_p

_POINTER_BITS = 8 * ctypes.sizeof(ctypes.c_void_p)
INVALID_HANDLE_VALUE = (1 << _POINTER_BITS) - 1  # (HANDLE)-1
INVALID_SOCKET = (1 << _POINTER_BITS) - 1  # (SOCKET)~0
SOCKET_ERROR = -1
INFINITE = 0xFFFFFFFF
FALSE = 0
TRUE = 1

# What a pointer parameter accepts (argtypes are c_void_p): an int address, None, byref(obj),
# a ctypes array or pointer. A Structure instance itself is refused, as ctypes refuses it.
Pointer: TypeAlias = object
# A HANDLE argument: an int (a SOCKET is passed as its int value) or None for NULL.
Handle: TypeAlias = "int | None"
SockAddress: TypeAlias = "tuple[str, int] | tuple[str, int, int, int]"
_CType: TypeAlias = "type[ctypes._SimpleCData[Any]]"


# -- Structures (layouts asserted against x64 Windows below) -----------------------------------


class _OVERLAPPED_OFFSETS(ctypes.Structure):
    _fields_ = [("Offset", DWORD), ("OffsetHigh", DWORD)]


class _OVERLAPPED_UNION(ctypes.Union):
    _anonymous_ = ("_offsets",)
    _fields_ = [("_offsets", _OVERLAPPED_OFFSETS), ("Pointer", ctypes.c_void_p)]


class OVERLAPPED(ctypes.Structure):
    """Internal holds the NTSTATUS (STATUS_PENDING while in flight), InternalHigh the bytes."""

    _anonymous_ = ("_union",)
    _fields_ = [
        ("Internal", ULONG_PTR),
        ("InternalHigh", ULONG_PTR),
        ("_union", _OVERLAPPED_UNION),
        ("hEvent", HANDLE),
    ]


class OVERLAPPED_ENTRY(ctypes.Structure):
    """One completion packet as GetQueuedCompletionStatusEx returns it."""

    _fields_ = [
        ("lpCompletionKey", ULONG_PTR),
        ("lpOverlapped", ctypes.c_void_p),
        ("Internal", ULONG_PTR),
        ("dwNumberOfBytesTransferred", DWORD),
    ]


class WSABUF(ctypes.Structure):
    """ULONG len, then (after 4 bytes of padding) CHAR* buf as a plain address."""

    _fields_ = [("len", ULONG), ("buf", ctypes.c_void_p)]


class GUID(ctypes.Structure):
    _fields_ = [
        ("Data1", ctypes.c_uint32),
        ("Data2", ctypes.c_uint16),
        ("Data3", ctypes.c_uint16),
        ("Data4", ctypes.c_uint8 * 8),
    ]


class sockaddr_in(ctypes.Structure):
    """Port and address in network byte order, as in the C structure."""

    _fields_ = [
        ("sin_family", ctypes.c_uint16),
        ("sin_port", ctypes.c_uint8 * 2),
        ("sin_addr", ctypes.c_uint8 * 4),
        ("sin_zero", ctypes.c_uint8 * 8),
    ]


class sockaddr_in6(ctypes.Structure):
    _fields_ = [
        ("sin6_family", ctypes.c_uint16),
        ("sin6_port", ctypes.c_uint8 * 2),
        ("sin6_flowinfo", ctypes.c_uint8 * 4),
        ("sin6_addr", ctypes.c_uint8 * 16),
        ("sin6_scope_id", ctypes.c_uint32),
    ]


class SOCKADDR_STORAGE(ctypes.Structure):
    _fields_ = [
        ("ss_family", ctypes.c_uint16),
        ("_pad1", ctypes.c_uint8 * 6),
        ("_align", ctypes.c_int64),
        ("_pad2", ctypes.c_uint8 * 112),
    ]


X64_SIZES: dict[type[ctypes.Structure], int] = {
    OVERLAPPED: 32,
    OVERLAPPED_ENTRY: 32,
    WSABUF: 16,
    GUID: 16,
    sockaddr_in: 16,
    sockaddr_in6: 28,
    SOCKADDR_STORAGE: 128,
}


def _x64_layout_errors() -> list[str]:
    return [
        f"sizeof({kind.__name__}) is {ctypes.sizeof(kind)}, x64 Windows has {size}"
        for kind, size in X64_SIZES.items()
        if ctypes.sizeof(kind) != size
    ]


if _POINTER_BITS == 64 and (_errors := _x64_layout_errors()):
    raise ImportError("IOCP structure layouts are wrong: " + "; ".join(_errors))

# AcceptEx wants each address slot at least 16 bytes larger than the largest sockaddr.
ACCEPT_ADDRESS_LENGTH = ctypes.sizeof(sockaddr_in6) + 16

# -- Constants -----------------------------------------------------------------------------------

# Win32 error codes (winerror.h).
ERROR_SUCCESS = 0
ERROR_INVALID_HANDLE = 6
ERROR_NETNAME_DELETED = 64
ERROR_INVALID_PARAMETER = 87
ERROR_SEM_TIMEOUT = 121
WAIT_TIMEOUT = 258
ERROR_MR_MID_NOT_FOUND = 317
ERROR_ABANDONED_WAIT_0 = 735
ERROR_OPERATION_ABORTED = 995
ERROR_IO_PENDING = 997
ERROR_NOT_FOUND = 1168
ERROR_CONNECTION_REFUSED = 1225
ERROR_GRACEFUL_DISCONNECT = 1226
ERROR_NETWORK_UNREACHABLE = 1231
ERROR_HOST_UNREACHABLE = 1232
ERROR_CONNECTION_ABORTED = 1236

# Winsock error codes (winsock2.h); WSA_IO_PENDING and WSA_OPERATION_ABORTED alias the above.
WSA_IO_PENDING = ERROR_IO_PENDING
WSA_OPERATION_ABORTED = ERROR_OPERATION_ABORTED
WSAEFAULT = 10014
WSAEINVAL = 10022
WSAEWOULDBLOCK = 10035
WSAENOTSOCK = 10038
WSAENOPROTOOPT = 10042
WSAEOPNOTSUPP = 10045
WSAEAFNOSUPPORT = 10047
WSAENETUNREACH = 10051
WSAECONNABORTED = 10053
WSAECONNRESET = 10054
WSAEISCONN = 10056
WSAENOTCONN = 10057
WSAESHUTDOWN = 10058
WSAETIMEDOUT = 10060
WSAECONNREFUSED = 10061
WSAEHOSTUNREACH = 10065

# NTSTATUS values seen in OVERLAPPED.Internal / OVERLAPPED_ENTRY.Internal (ntstatus.h).
STATUS_SUCCESS = 0x00000000
STATUS_PENDING = 0x00000103
STATUS_IO_TIMEOUT = 0xC00000B5  # -> ERROR_SEM_TIMEOUT
STATUS_CANCELLED = 0xC0000120  # -> ERROR_OPERATION_ABORTED
STATUS_LOCAL_DISCONNECT = 0xC000013B  # -> ERROR_NETNAME_DELETED
STATUS_REMOTE_DISCONNECT = 0xC000013C  # -> ERROR_NETNAME_DELETED
STATUS_CONNECTION_RESET = 0xC000020D  # -> ERROR_NETNAME_DELETED
STATUS_CONNECTION_REFUSED = 0xC0000236  # -> ERROR_CONNECTION_REFUSED
STATUS_NETWORK_UNREACHABLE = 0xC000023C  # -> ERROR_NETWORK_UNREACHABLE
STATUS_HOST_UNREACHABLE = 0xC000023D  # -> ERROR_HOST_UNREACHABLE
STATUS_CONNECTION_ABORTED = 0xC0000241  # -> ERROR_CONNECTION_ABORTED

# Winsock options and ioctls (Windows values: SOL_SOCKET is 0xFFFF, AF_INET6 is 23).
SOL_SOCKET = 0xFFFF
SO_UPDATE_ACCEPT_CONTEXT = 0x700B
SO_UPDATE_CONNECT_CONTEXT = 0x7010
IPPROTO_TCP = 6
TCP_NODELAY = 0x0001
SIO_GET_EXTENSION_FUNCTION_POINTER = 0xC8000006
AF_INET = 2
AF_INET6 = 23

# SetFileCompletionNotificationModes flags.
FILE_SKIP_COMPLETION_PORT_ON_SUCCESS = 0x1
FILE_SKIP_SET_EVENT_ON_HANDLE = 0x2

# Extension function GUIDs (mswsock.h).
WSAID_ACCEPTEX = "b5367df1-cbac-11cf-95ca-00805f48a192"
WSAID_GETACCEPTEXSOCKADDRS = "b5367df2-cbac-11cf-95ca-00805f48a192"
WSAID_CONNECTEX = "25a207b9-ddf3-4660-8ee9-76e58c74063e"
WSAID_DISCONNECTEX = "7fda2e11-8630-436f-a031-f536a6eec157"

# Codes meaning "this connection is over" rather than "something is broken": a reset or
# aborted peer, a local cancel or close, a shutdown socket.
DISCONNECT_ERRORS = frozenset(
    {
        ERROR_NETNAME_DELETED,
        ERROR_OPERATION_ABORTED,
        ERROR_GRACEFUL_DISCONNECT,
        ERROR_CONNECTION_ABORTED,
        WSAECONNABORTED,
        WSAECONNRESET,
        WSAENOTCONN,
        WSAESHUTDOWN,
    }
)

# -- Signatures: what load() binds, and what the double checks its arguments against ----------

_P = ctypes.c_void_p
SIGNATURES: dict[str, tuple[str, _CType | None, tuple[_CType, ...]]] = {
    "CreateIoCompletionPort": ("kernel32", HANDLE, (HANDLE, HANDLE, ULONG_PTR, DWORD)),
    "GetQueuedCompletionStatusEx": ("kernel32", BOOL, (HANDLE, _P, ULONG, _P, DWORD, BOOL)),
    "PostQueuedCompletionStatus": ("kernel32", BOOL, (HANDLE, DWORD, ULONG_PTR, _P)),
    "CancelIoEx": ("kernel32", BOOL, (HANDLE, _P)),
    "CloseHandle": ("kernel32", BOOL, (HANDLE,)),
    "SetFileCompletionNotificationModes": ("kernel32", BOOL, (HANDLE, UCHAR)),
    "RtlNtStatusToDosError": ("ntdll", ULONG, (NTSTATUS,)),
    "WSAIoctl": ("ws2_32", INT, (SOCKET, DWORD, _P, DWORD, _P, DWORD, _P, _P, _P)),
    "WSARecv": ("ws2_32", INT, (SOCKET, _P, DWORD, _P, _P, _P, _P)),
    "WSASend": ("ws2_32", INT, (SOCKET, _P, DWORD, _P, DWORD, _P, _P)),
    "setsockopt": ("ws2_32", INT, (SOCKET, INT, INT, _P, INT)),
    "WSAGetLastError": ("ws2_32", INT, ()),
}

# Extension functions, reached through WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER).
EXTENSION_SIGNATURES: dict[str, tuple[str, _CType | None, tuple[_CType, ...]]] = {
    "AcceptEx": (WSAID_ACCEPTEX, BOOL, (SOCKET, SOCKET, _P, DWORD, DWORD, DWORD, _P, _P)),
    "GetAcceptExSockaddrs": (
        WSAID_GETACCEPTEXSOCKADDRS,
        None,
        (_P, DWORD, DWORD, DWORD, _P, _P, _P, _P),
    ),
    "ConnectEx": (WSAID_CONNECTEX, BOOL, (SOCKET, _P, INT, _P, DWORD, _P, _P)),
}


class Win32Api(Protocol):
    """Every Win32 function the IOCP driver may call, in Win32 parameter order.

    Each member is a ctypes-style callable: positional arguments only, integers for handles,
    sizes and flags, and for pointers an int address, None, ``byref(...)``, or a ctypes array
    or pointer. Failure is reported the Win32 way (FALSE / SOCKET_ERROR / NULL) with the code in
    ``get_last_error()``; nothing raises.
    """

    def CreateIoCompletionPort(
        self,
        FileHandle: Handle,
        ExistingCompletionPort: Handle,
        CompletionKey: int,
        NumberOfConcurrentThreads: int,
        /,
    ) -> int | None: ...

    def GetQueuedCompletionStatusEx(
        self,
        CompletionPort: Handle,
        lpCompletionPortEntries: Pointer,
        ulCount: int,
        ulNumEntriesRemoved: Pointer,
        dwMilliseconds: int,
        fAlertable: int,
        /,
    ) -> int: ...

    def PostQueuedCompletionStatus(
        self,
        CompletionPort: Handle,
        dwNumberOfBytesTransferred: int,
        dwCompletionKey: int,
        lpOverlapped: Pointer,
        /,
    ) -> int: ...

    def CancelIoEx(self, hFile: Handle, lpOverlapped: Pointer, /) -> int: ...

    def CloseHandle(self, hObject: Handle, /) -> int: ...

    def SetFileCompletionNotificationModes(self, FileHandle: Handle, Flags: int, /) -> int: ...

    def RtlNtStatusToDosError(self, Status: int, /) -> int: ...

    def WSAIoctl(
        self,
        s: int,
        dwIoControlCode: int,
        lpvInBuffer: Pointer,
        cbInBuffer: int,
        lpvOutBuffer: Pointer,
        cbOutBuffer: int,
        lpcbBytesReturned: Pointer,
        lpOverlapped: Pointer,
        lpCompletionRoutine: Pointer,
        /,
    ) -> int: ...

    def WSARecv(
        self,
        s: int,
        lpBuffers: Pointer,
        dwBufferCount: int,
        lpNumberOfBytesRecvd: Pointer,
        lpFlags: Pointer,
        lpOverlapped: Pointer,
        lpCompletionRoutine: Pointer,
        /,
    ) -> int: ...

    def WSASend(
        self,
        s: int,
        lpBuffers: Pointer,
        dwBufferCount: int,
        lpNumberOfBytesSent: Pointer,
        dwFlags: int,
        lpOverlapped: Pointer,
        lpCompletionRoutine: Pointer,
        /,
    ) -> int: ...

    def setsockopt(
        self, s: int, level: int, optname: int, optval: Pointer, optlen: int, /
    ) -> int: ...

    def WSAGetLastError(self) -> int: ...

    def AcceptEx(
        self,
        sListenSocket: int,
        sAcceptSocket: int,
        lpOutputBuffer: Pointer,
        dwReceiveDataLength: int,
        dwLocalAddressLength: int,
        dwRemoteAddressLength: int,
        lpdwBytesReceived: Pointer,
        lpOverlapped: Pointer,
        /,
    ) -> int: ...

    def GetAcceptExSockaddrs(
        self,
        lpOutputBuffer: Pointer,
        dwReceiveDataLength: int,
        dwLocalAddressLength: int,
        dwRemoteAddressLength: int,
        LocalSockaddr: Pointer,
        LocalSockaddrLength: Pointer,
        RemoteSockaddr: Pointer,
        RemoteSockaddrLength: Pointer,
        /,
    ) -> None: ...

    def ConnectEx(
        self,
        s: int,
        name: Pointer,
        namelen: int,
        lpSendBuffer: Pointer,
        dwSendDataLength: int,
        lpdwBytesSent: Pointer,
        lpOverlapped: Pointer,
        /,
    ) -> int: ...

    def get_last_error(self) -> int:
        """The last error of the calling thread (``ctypes.get_last_error()`` on Windows)."""
        ...


class Win32Unavailable(Exception):
    """IOCP cannot be used here; ``reason`` says why, for the driver list and skipped tests."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Win32Error(Exception):
    """A Win32 call failed; ``winerror`` is the code from GetLastError/WSAGetLastError."""

    def __init__(self, function: str, winerror: int) -> None:
        super().__init__(f"{function} failed with Windows error {winerror}")
        self.function = function
        self.winerror = winerror


# -- Helpers the driver needs ------------------------------------------------------------------


def guid(text: str) -> GUID:
    """The in-memory GUID for its textual form (Data1-3 little-endian, as Windows stores it)."""
    return GUID.from_buffer_copy(uuid.UUID(text).bytes_le)


def get_extension_pointer(api: Win32Api, sock: int, guid_text: str) -> int:
    """Look an extension function up with WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)."""
    wanted = guid(guid_text)
    address = ctypes.c_void_p()
    returned = DWORD()
    rc = api.WSAIoctl(
        sock,
        SIO_GET_EXTENSION_FUNCTION_POINTER,
        ctypes.byref(wanted),
        ctypes.sizeof(wanted),
        ctypes.byref(address),
        ctypes.sizeof(address),
        ctypes.byref(returned),
        None,
        None,
    )
    if rc == SOCKET_ERROR or not address.value:
        raise Win32Error("WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)", api.get_last_error())
    return address.value


def sockaddr_to_address(ptr: int, length: int) -> SockAddress:
    """Decode a Windows sockaddr at ``ptr`` into the tuple Python's socket module uses."""
    if length < 2:
        raise ValueError(f"sockaddr of {length} bytes is too short")
    raw = ctypes.string_at(ptr, length)
    (family,) = struct.unpack_from("<H", raw)
    if family == AF_INET and length >= ctypes.sizeof(sockaddr_in):
        (port,) = struct.unpack_from(">H", raw, 2)
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == AF_INET6 and length >= ctypes.sizeof(sockaddr_in6):
        port, flowinfo = struct.unpack_from(">HI", raw, 2)
        (scope_id,) = struct.unpack_from("<I", raw, 24)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope_id
    raise ValueError(f"unsupported sockaddr: family {family}, {length} bytes")


def sockaddr_from_address(address: SockAddress) -> tuple[SOCKADDR_STORAGE, int]:
    """Encode an (host, port[, flowinfo, scope_id]) tuple as a Windows sockaddr and its length."""
    storage = SOCKADDR_STORAGE()
    raw = (ctypes.c_uint8 * ctypes.sizeof(storage)).from_buffer(storage)
    host, port = address[0], address[1]
    if ":" in host:
        flowinfo, scope_id = (address[2], address[3]) if len(address) == 4 else (0, 0)
        struct.pack_into("<H", raw, 0, AF_INET6)
        struct.pack_into(">HI16s", raw, 2, port, flowinfo, socket.inet_pton(socket.AF_INET6, host))
        struct.pack_into("<I", raw, 24, scope_id)
        return storage, ctypes.sizeof(sockaddr_in6)
    struct.pack_into("<H", raw, 0, AF_INET)
    struct.pack_into(">H4s", raw, 2, port, socket.inet_pton(socket.AF_INET, host))
    return storage, ctypes.sizeof(sockaddr_in)


def ntstatus_to_winerror(api: Win32Api, status: int) -> int:
    """Convert the NTSTATUS of a completion (OVERLAPPED_ENTRY.Internal) to a Win32 error code."""
    status &= 0xFFFFFFFF
    signed = status - (1 << 32) if status & 0x80000000 else status
    return int(api.RtlNtStatusToDosError(signed))


def winerror_is_disconnect(code: int) -> bool:
    """True for codes that only mean the connection ended (reset, aborted, cancelled, closed)."""
    return code in DISCONNECT_ERRORS


# -- Loading -------------------------------------------------------------------------------------


def load() -> Win32Api:
    """Bind kernel32/ws2_32/ntdll and the Winsock extensions; Win32Unavailable if impossible."""
    if sys.platform != "win32":
        raise Win32Unavailable(f"IOCP is Windows-only (this is {sys.platform})")
    else:
        return _load_windows()


def probe() -> tuple[bool, str]:
    """Whether IOCP can be used here, and a one-line reason."""
    try:
        load()
    except Win32Unavailable as exc:
        return False, exc.reason
    return True, "IOCP available"


if sys.platform == "win32":
    import types

    def _load_windows() -> Win32Api:
        if _POINTER_BITS != 64:
            raise Win32Unavailable("the IOCP driver needs a 64-bit Python")
        try:
            dlls = {
                name: ctypes.WinDLL(name, use_last_error=True)
                for name in ("kernel32", "ws2_32", "ntdll")
            }
        except OSError as exc:
            raise Win32Unavailable(f"cannot load the Win32 DLLs: {exc}") from exc
        bindings = types.SimpleNamespace(get_last_error=ctypes.get_last_error)
        for name, (dll, restype, argtypes) in SIGNATURES.items():
            function = getattr(dlls[dll], name)
            function.restype = restype
            function.argtypes = argtypes
            setattr(bindings, name, function)
        api = cast(Win32Api, bindings)
        # Importing socket ran WSAStartup; the pointers hold for every socket of the
        # Microsoft TCP/IP provider, IPv4 and IPv6 alike.
        with socket.socket() as lookup:
            for name, (guid_text, restype, argtypes) in EXTENSION_SIGNATURES.items():
                try:
                    address = get_extension_pointer(api, lookup.fileno(), guid_text)
                except Win32Error as exc:
                    raise Win32Unavailable(f"no {name} extension: {exc}") from exc
                prototype = ctypes.WINFUNCTYPE(restype, *argtypes, use_last_error=True)
                setattr(bindings, name, prototype(address))
        return api
