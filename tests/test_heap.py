"""Heap upkeep: freed memory goes back to the OS, arenas are capped, and it can be turned off."""

from __future__ import annotations

import sys

import pytest

from bentos.settings import WebSettings
from bentos.web import heap


@pytest.mark.skipif(heap.malloc_trim() is None, reason="needs glibc's malloc_trim (Linux)")
def test_trimming_returns_freed_memory():
    # Many small blocks, most freed: the survivors pin the heap's top, so free() alone cannot
    # shrink it, and glibc keeps the freed pages between them.
    blocks = [bytearray(1000) for _ in range(200_000)]
    survivors = blocks[::16]
    del blocks
    before = heap.rss_mb()
    heap.malloc_trim()(0)
    assert heap.rss_mb() < before - 100, "malloc_trim gave nothing back"
    assert len(survivors) == 12_500
    assert heap.limit_arenas(2)


def test_interval_zero_turns_it_off():
    assert heap.keep_rss_level(0) is None
    assert WebSettings().heap_trim_s == 60
    with pytest.raises(ValueError):
        WebSettings(heap_trim_s=-1)
    assert sys.platform != "linux" or heap.keep_rss_level(3600).daemon
