"""Work of concurrent requests done together, where one call for many costs little more than one
call for one: query embeddings (one forward pass) and vector searches (one LanceDB query)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """``fn`` takes a list of items and returns one result per item. Items that arrive while it
    runs go into its next call, so a lone item never waits and a burst costs a few calls."""

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 64):
        self.fn, self.max_batch = fn, max_batch
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            batch = [(item, f) for item, f in batch if not f.done()]  # a cancelled request needs nothing
            if not batch:
                continue
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
