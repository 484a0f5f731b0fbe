"""Work of concurrent requests done together, where one call for many costs little more than one
call for one: query embeddings (one forward pass) and vector searches (one LanceDB query)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """``fn`` takes a list of items and returns one result per item. Items that arrive while it
    runs go into its next call. When it is idle, an item waits for others only while requests
    have been arriving together (the last busy spell, within ``crowd_memory_s``, handled several):
    until as many are in as then, at most ``window_s``. So one stream alone never waits, and a
    burst shares one call instead of the first going alone and the rest after it."""

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 64, window_s: float = 0.0, crowd_memory_s: float = 2.0):
        self.fn, self.max_batch, self.window_s, self.crowd_memory_s = fn, max_batch, window_s, crowd_memory_s
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._crowded_until, self._crowd = 0.0, 1  # items of the last busy spell that had several
        self._enough: asyncio.Event | None = None  # set when the crowd has arrived
        self.calls = 0  # how many times ``fn`` ran, for tests and benches

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._enough is not None and len(self._pending) >= self._crowd:
            self._enough.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        if self.window_s and time.monotonic() < self._crowded_until and len(self._pending) < self._crowd:
            self._enough = asyncio.Event()
            try:  # until as many as last time are here, or the window ends
                await asyncio.wait_for(self._enough.wait(), self.window_s)
            except TimeoutError:
                pass
            self._enough = None
        handled = 0
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            batch = [(item, f) for item, f in batch if not f.done()]  # a cancelled request needs nothing
            if not batch:
                continue
            handled += len(batch)
            self.calls += 1
            try:
                # Off the event loop, so streams keep flowing meanwhile.
                results = await anyio.to_thread.run_sync(self.fn, [item for item, _ in batch])
            except Exception as e:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), result in zip(batch, results):
                if not f.done():
                    f.set_result(result)
        if handled > 1:
            self._crowded_until, self._crowd = time.monotonic() + self.crowd_memory_s, min(handled, self.max_batch)
