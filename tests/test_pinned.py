"""The completion drivers' send buffers: used in place, whatever the core hands over."""

from __future__ import annotations

import ctypes

import pytest

from spcore.drivers.pinned import pin


def test_bytes_are_used_in_place() -> None:
    data = b"immutable bytes"
    address, length, keeper = pin(data)
    assert (length, ctypes.string_at(address, length)) == (len(data), data)
    assert isinstance(keeper, ctypes.c_char_p) and keeper.value == data


def test_a_bytearray_is_used_in_place_and_cannot_move_while_pinned() -> None:
    growing = bytearray(b"mutable")
    address, length, keeper = pin(memoryview(growing))
    assert (address, length) == (ctypes.addressof(ctypes.c_char.from_buffer(growing)), 7)
    with pytest.raises(BufferError):
        growing.extend(b"!")  # the kernel may still read it: it cannot move
    del keeper
    growing.extend(b"!")


def test_the_rest_of_a_partly_sent_bytes_is_not_copied() -> None:
    data = b"0123456789"
    base, _, _ = pin(data)
    address, length, keeper = pin(memoryview(data)[4:])
    assert (address, length) == (base + 4, 6)
    assert ctypes.string_at(address, length) == b"456789"
    assert isinstance(keeper, memoryview) and keeper.obj is data  # holds the bytes alive


def test_empty_and_non_contiguous_buffers() -> None:
    assert pin(memoryview(bytearray()))[:2] == (0, 0)
    assert pin(memoryview(b"abc")[3:])[:2] == (0, 0)
    with pytest.raises(TypeError):
        pin(memoryview(b"abcdef")[::2])
