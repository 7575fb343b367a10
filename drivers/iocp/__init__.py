"""The Windows I/O completion port driver (bindings in ``win32``)."""
