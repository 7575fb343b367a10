"""A Linux test double of the Win32 IOCP bindings in ``drivers/iocp/win32.py``."""

from .win32_double import Win32Double, make_double

__all__ = ["Win32Double", "make_double"]
