"""The routing table of a blue-green pair, and where it lives (memory and a file locally, a
``modal.Dict`` on Modal). The router reads it on every request; a promotion writes it in one step."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

Slot = Literal["blue", "green"]
SLOTS: tuple[Slot, Slot] = ("blue", "green")


class Shadow(BaseModel):
    """A slot that gets a copy of live chat requests, whose answers are compared and discarded."""

    model_config = {"extra": "forbid"}

    slot: Slot
    percent: int = Field(ge=0, le=100, description="Percent of live chat requests copied to it.")


class Traffic(BaseModel):
    """Base URLs of the two slots and the percent of requests each gets."""

    model_config = {"extra": "forbid"}

    upstreams: dict[Slot, str] = Field(description="Base URL of each slot's gateway, e.g. http://127.0.0.1:3001.")
    weights: dict[Slot, int] = Field(description="Percent of requests per slot; the two add up to 100.")
    revision: int = Field(0, ge=0, description="Bumped on every change, so readers see which table they hold.")
    shadow: Shadow | None = Field(None, description="A slot with no users that gets a copy of live chat requests.")

    @field_validator("upstreams")
    @classmethod
    def _urls(cls, v: dict[str, str]) -> dict[str, str]:
        for slot, url in v.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{slot}: {url!r} is not an http(s) URL")
        return {slot: url.rstrip("/") for slot, url in v.items()}

    @model_validator(mode="after")
    def _weights(self) -> Traffic:
        if set(self.weights) != set(SLOTS):
            raise ValueError("give a weight for both blue and green")
        if any(w < 0 or w > 100 for w in self.weights.values()) or sum(self.weights.values()) != 100:
            raise ValueError(f"weights must be whole percents adding up to 100, got {self.weights}")
        for slot, w in self.weights.items():
            if w and slot not in self.upstreams:
                raise ValueError(f"{slot} has weight {w} but no upstream URL")
        if self.shadow and self.shadow.percent:
            if self.shadow.slot not in self.upstreams:
                raise ValueError(f"the shadow slot {self.shadow.slot} has no upstream URL")
            if self.weights[self.shadow.slot]:
                raise ValueError(f"the shadow slot {self.shadow.slot} serves users ({self.weights[self.shadow.slot]}%): give it weight 0")
        return self

    @property
    def live(self) -> Slot:
        """The slot with most traffic (blue on a tie): the one to fall back on and roll back to."""
        return "green" if self.weights["green"] > self.weights["blue"] else "blue"

    def other(self, slot: Slot) -> Slot:
        return "green" if slot == "blue" else "blue"

    def with_candidate(self, candidate: Slot, percent: int, url: str | None = None) -> Traffic:
        upstreams = {**self.upstreams, **({candidate: url} if url else {})}
        weights = {s: percent if s == candidate else 100 - percent for s in SLOTS}
        return Traffic(upstreams=upstreams, weights=weights, revision=self.revision + 1)


class MemoryStore:
    """The table in the router's memory, saved to ``path`` (if given) so a restarted router keeps
    the last promotion instead of falling back to its start-up flags."""

    def __init__(self, initial: Traffic, path: Path | None = None):
        self.path = path
        if path is not None and path.exists():
            initial = Traffic.model_validate_json(path.read_text())
        self._traffic = initial
        self._lock = threading.Lock()
        self._save(initial)

    def get(self) -> Traffic:
        return self._traffic

    async def read(self) -> Traffic:
        """``get`` for the router's handlers (in memory: nothing to wait for)."""
        return self._traffic

    def set(self, traffic: Traffic) -> Traffic:
        with self._lock:
            traffic = traffic.model_copy(update={"revision": self._traffic.revision + 1})
            self._save(traffic)
            self._traffic = traffic  # one reference swap: each request sees the old table or the new
            return traffic

    def _save(self, traffic: Traffic) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".traffic-")
        with os.fdopen(fd, "w") as f:
            f.write(traffic.model_dump_json())
        os.replace(tmp, self.path)


class DictStore:
    """The table in a ``modal.Dict`` (or anything with ``get`` and item assignment), shared by every
    router container and written by `ragserve promote modal`. Readers cache it for ``refresh_s``."""

    KEY = "traffic"

    def __init__(self, d: Any, refresh_s: float = 1.0):
        self.d, self.refresh_s = d, refresh_s
        self._cached: Traffic | None = None
        self._read_at = 0.0

    def get(self) -> Traffic:
        if self._stale():
            self._keep(self.d.get(self.KEY))
        return self._cached

    async def read(self) -> Traffic:
        """``get`` for the router's handlers: a modal.Dict is read with its async form
        (``get.aio``), so a refresh never blocks the event loop that serves every request;
        anything else with a blocking ``get`` is read on a thread."""
        if self._stale():
            aio = getattr(self.d.get, "aio", None)
            self._keep(await aio(self.KEY) if aio else await asyncio.to_thread(self.d.get, self.KEY))
        return self._cached

    def _stale(self) -> bool:
        return self._cached is None or time.monotonic() - self._read_at >= self.refresh_s

    def _keep(self, raw) -> None:
        if raw is None:
            raise LookupError("no routing table yet: run `ragserve promote modal --live-url URL_OF_THE_LIVE_DEPLOYMENT` first")
        self._cached, self._read_at = Traffic.model_validate_json(raw if isinstance(raw, str) else json.dumps(raw)), time.monotonic()

    def set(self, traffic: Traffic) -> Traffic:
        current = self.d.get(self.KEY)
        revision = Traffic.model_validate_json(current).revision + 1 if current else traffic.revision
        traffic = traffic.model_copy(update={"revision": revision})
        self.d[self.KEY] = traffic.model_dump_json()  # one put: routers see the old table or the new
        self._cached, self._read_at = traffic, time.monotonic()
        return traffic
