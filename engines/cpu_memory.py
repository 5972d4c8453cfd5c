"""Keep freed memory in the process while CPU inference runs, so big tensors reuse it.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap`
and returns it with `munmap` when freed. A 640x360 frame with 64 float32 channels is 59 MiB, so
every layer's output is new memory that the kernel must fault in and zero page by page; on the
development CPU that doubled the time of a Real-ESRGAN frame at that size. Inside
`keep_freed_memory()` malloc takes large blocks from its heap and keeps freed ones for reuse;
on leaving, the settings return to what glibc's adaptive policy converges to after large frees
(mmap above 32 MiB, trim above 64 MiB) and the free memory goes back to the system.

Elsewhere (macOS, Windows, musl) it does nothing, and it leaves alone a process whose malloc
was tuned through the environment (`MALLOC_*_` variables or `GLIBC_TUNABLES`). Nested and
concurrent uses are counted: the settings return when the last one leaves. Environment variable
`VSRKIT_KEEP_FREED_MEMORY=0` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import threading
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
TRIM_WHILE_KEPT = 2**31 - 1
MMAP_MAX_DEFAULT = 65536
MMAP_THRESHOLD_AFTER = 32 * 1024 * 1024
TRIM_THRESHOLD_AFTER = 64 * 1024 * 1024

_lock = threading.Lock()
_users = 0
_libc: ctypes.CDLL | None = None
_libc_checked = False


def _glibc() -> ctypes.CDLL | None:
    global _libc, _libc_checked
    if not _libc_checked:
        _libc_checked = True
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _libc = libc
            except (OSError, AttributeError):
                _libc = None
    return _libc


USER_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_",
                        "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def supported() -> bool:
    """True where the policy can be changed (Linux with glibc), it is not turned off, and the user
    has not set malloc's policy through the environment."""
    if os.environ.get("VSRKIT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if any(os.environ.get(name) for name in USER_MALLOC_SETTINGS):
        return False
    return _glibc() is not None


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Within the block, large freed blocks stay in the process for reuse; yields whether it applies."""
    global _users
    libc = _glibc() if supported() else None
    if libc is None:
        yield False
        return
    with _lock:
        _users += 1
        if _users == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_WHILE_KEPT)
    try:
        yield True
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                libc.mallopt(M_MMAP_MAX, MMAP_MAX_DEFAULT)
                libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_AFTER)
                libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_AFTER)
                libc.malloc_trim(0)
