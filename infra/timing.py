"""When an answer is felt: a stream's first text and its pace after that, or a whole answer's end."""

from __future__ import annotations

import re
import time

# A streamed chunk that carries text: `"content": "x...` (the role chunk's empty content does not count).
TEXT_CHUNK = re.compile(rb'"content":\s*"(?!")')


class Timing:
    """Fed an answer's body chunk by chunk, from ``started`` (when the request was sent)."""

    def __init__(self, started: float, stream: bool = False):
        self.started, self.stream = started, stream
        self.first: float | None = None
        self.pieces = 0  # chunks with text after the first
        self.ended: float | None = None
        self.finished = False

    def feed(self, chunk: bytes) -> None:
        if self.stream and (found := len(TEXT_CHUNK.findall(chunk))):
            if self.first is None:
                self.first, found = time.perf_counter(), found - 1
            self.pieces += found

    def done(self) -> None:
        self.ended, self.finished = time.perf_counter(), True

    @property
    def ttft_s(self) -> float | None:
        return None if self.first is None else self.first - self.started

    @property
    def rate(self) -> float | None:
        """Chunks with text per second after the first (about tokens/s)."""
        if self.first is None or not self.pieces or self.ended is None or self.ended <= self.first:
            return None
        return self.pieces / (self.ended - self.first)

    @property
    def total_s(self) -> float | None:
        return None if self.ended is None else self.ended - self.started
