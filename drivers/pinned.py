"""The address of a buffer the kernel will read later, for the completion drivers' sends.

A send posted to io_uring or an I/O completion port names its data by address, and the
kernel reads it until the send completes. :func:`pin` returns that address with a *keeper*,
the object to hold until then, without copying: the core's output is ``bytes``, writable
buffers, and read-only ``memoryview`` slices of ``bytes`` (the rest of a partly sent buffer),
and every one of them is used in place.
"""

from __future__ import annotations

import ctypes

__all__ = ["Pinnable", "pin"]

Pinnable = bytes | bytearray | memoryview


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (Include/pybuffer.h), of which only ``buf`` is read."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_PyBUF_SIMPLE = 0
# Private prototypes, so that no other user of ``ctypes.pythonapi`` sees our argtypes.
_get_buffer = ctypes.PYFUNCTYPE(
    ctypes.c_int, ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int
)(("PyObject_GetBuffer", ctypes.pythonapi))
_release_buffer = ctypes.PYFUNCTYPE(None, ctypes.POINTER(_PyBuffer))(
    ("PyBuffer_Release", ctypes.pythonapi)
)


def pin(buf: Pinnable) -> tuple[int, int, object]:
    """Return ``(address, nbytes, keeper)`` for ``buf``; hold ``keeper`` until the completion.

    ``bytes`` are immutable and never move. Any other buffer is reached through a
    ``memoryview``, which is the keeper: while it lives its exporter stays exported, so a
    bytearray cannot be resized under the kernel. Only C-contiguous buffers are accepted.
    """
    if isinstance(buf, bytes):
        pointer = ctypes.c_char_p(buf)  # points into the bytes object, which it holds
        return ctypes.c_void_p.from_buffer(pointer).value or 0, len(buf), pointer
    view = memoryview(buf).cast("B")  # raises for a non-contiguous buffer
    if not view.nbytes:
        return 0, 0, None
    if not view.readonly:
        first = ctypes.c_char.from_buffer(view)
        return ctypes.addressof(first), view.nbytes, first
    info = _PyBuffer()
    _get_buffer(view, ctypes.byref(info), _PyBUF_SIMPLE)  # a failure raises, as PyDLL does
    address = info.buf or 0
    _release_buffer(ctypes.byref(info))  # ``view`` keeps its own export, and is the keeper
    return address, view.nbytes, view
