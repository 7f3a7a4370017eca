"""Cap glibc's malloc arenas in a threaded server process.

glibc gives each thread that allocates concurrently its own arena (up to 8 per core), and
memory freed in one arena is not reused by another. The cloud decodes sync batches and runs
DuckDB work on worker threads; with two 40k-reading batches in flight its peak RSS was
235-247 MB, and 228-234 MB with two arenas, at the same drain rate (bench/sync_drain.py).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("iotsphere.memory")

M_ARENA_MAX = -8  # <malloc.h>


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """mallopt(M_ARENA_MAX, arenas) before worker threads start; False where there is no glibc
    (musl, macOS): nothing to do there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter is linked with
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arenas)))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
    return ok
