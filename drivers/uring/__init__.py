"""io_uring driver: completion-based I/O through ctypes syscalls and mmap'd rings (Linux)."""
