"""Keep a service's RSS at what it uses: few malloc arenas, and freed memory handed back.

glibc gives each thread that allocates at once an arena of its own (up to 8 per core) and keeps
what is freed inside them. The gateway allocates and frees a lot from worker threads (torch
tensors of query embeddings, Arrow buffers of searches, request objects), so under steady load
its RSS crept up although nothing stayed alive: in a soak, one `malloc_trim(0)` gave back 7 to
40 MB of 790 to 835, and what stayed grew in arenas created as more threads ran at once. Two
arenas and a trim once a minute keep it level. Elsewhere than glibc (macOS, musl) there is
nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time

log = logging.getLogger(__name__)


M_ARENA_MAX = -8  # glibc's mallopt parameter


def _libc(name: str):
    """A glibc function, or None where the C library has none."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def malloc_trim():
    return _libc("malloc_trim")


def limit_arenas(n: int = 2) -> bool:
    """At most ``n`` arenas from now on (as MALLOC_ARENA_MAX would from the start)."""
    mallopt = _libc("mallopt")
    return bool(mallopt and mallopt(M_ARENA_MAX, n))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def keep_rss_level(interval_s: float) -> threading.Thread | None:
    """Two arenas, and a daemon thread that trims every ``interval_s`` seconds (0: neither).
    ctypes drops the GIL for the call, so requests keep being served while it runs."""
    trim = malloc_trim()
    if not interval_s or trim is None:
        return None
    limit_arenas()

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            before, t0 = rss_mb(), time.perf_counter()
            trim(0)
            log.debug(
                "heap trimmed",
                extra={"fields": {"released_mb": round(before - rss_mb(), 1), "ms": round((time.perf_counter() - t0) * 1000, 1)}},
            )

    thread = threading.Thread(target=loop, name="heap-trim", daemon=True)
    thread.start()
    return thread
