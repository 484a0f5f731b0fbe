"""The guard-model rail: a moderation model (Llama Guard family) served by its own vLLM engine,
asked about the user's message and about the answer.

The moderation prompt is rendered by the guard model's own chat template: we send the
conversation as chat messages and vLLM applies the template that ships with the model (Llama
Guard 3's lists its hazard categories S1-S14 and asks for "safe" or "unsafe" and the categories).
The answer is held to that shape by a regex (vLLM's structured outputs), so every verdict parses;
any other failure (timeout, HTTP error, unparseable text) raises, and the rail fails closed.

A guard family is one ``GuardFormat``: how a conversation becomes messages, the answer's regex and
how the answer becomes a verdict. To add one (ShieldGemma, Granite Guardian), write its format and
add it to ``FORMATS``; docs/architecture.md, "Guard model", says more.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import httpx

from bentos.guard.metrics import GUARD_METRICS
from bentos.settings import GuardSettings
from bentos.web.relay import http_client


class GuardModelError(RuntimeError):
    pass


@dataclass(frozen=True)
class Verdict:
    safe: bool
    categories: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GuardFormat:
    name: str
    answer_regex: str

    def messages(self, user: str, assistant: str | None = None) -> list[dict]:
        """The turn to moderate, with the user's message before an answer: Llama Guard judges
        the last turn, in the context of the ones before it."""
        out = [{"role": "user", "content": user}]
        if assistant is not None:
            out.append({"role": "assistant", "content": assistant})
        return out

    def parse(self, text: str) -> Verdict:
        lines = [s.strip() for s in text.strip().splitlines() if s.strip()]
        if lines[:1] == ["safe"]:
            return Verdict(True)
        if lines[:1] == ["unsafe"]:
            categories = {c.strip() for c in (lines[1] if len(lines) > 1 else "").split(",") if c.strip()}
            if all(re.fullmatch(r"S\d{1,2}", c) for c in categories):
                return Verdict(False, tuple(sorted(categories, key=lambda c: int(c[1:]))))
        raise GuardModelError(f"the guard model's answer is not a {self.name} verdict: {text[:80]!r}")


LLAMA_GUARD_3 = GuardFormat("llama_guard_3", r"safe|unsafe\nS(?:[1-9]|1[0-4])(?:,S(?:[1-9]|1[0-4])){0,13}")
FORMATS = {f.name: f for f in (LLAMA_GUARD_3,)}


class GuardModel:
    """Asks the guard engine (an OpenAI-compatible chat endpoint) for a verdict."""

    def __init__(self, http: httpx.AsyncClient, model: str, fmt: GuardFormat, timeout_s: float):
        self.http, self.model, self.format, self.timeout_s = http, model, fmt, timeout_s

    async def verdict(self, stage: str, user: str, assistant: str | None = None) -> Verdict:
        body = {
            "model": self.model,
            "messages": self.format.messages(user, assistant),
            "max_tokens": 64,  # the longest verdict, all 14 categories, is about 50 tokens
            "temperature": 0,
            "structured_outputs": {"regex": self.format.answer_regex},
        }
        t0 = time.perf_counter()
        try:
            r = await self.http.post("/v1/chat/completions", json=body, timeout=self.timeout_s)
            if r.status_code != 200:
                raise GuardModelError(f"the guard model answered HTTP {r.status_code}: {r.text[:200]}")
            verdict = self.format.parse(r.json()["choices"][0]["message"]["content"] or "")
        except httpx.TimeoutException:
            raise GuardModelError(f"the guard model gave no verdict within {self.timeout_s:g} s (RAGSERVE_GUARD_TIMEOUT_S)") from None
        except httpx.HTTPError as e:
            raise GuardModelError(f"the guard model cannot be reached: {type(e).__name__}: {e}") from None
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise GuardModelError(f"the guard model's answer is not an OpenAI chat completion: {type(e).__name__}: {e}") from None
        finally:
            GUARD_METRICS.guard_model_seconds.labels(stage=stage).observe(time.perf_counter() - t0)
        GUARD_METRICS.guard_model_verdicts.labels(stage=stage, verdict="safe" if verdict.safe else "unsafe").inc()
        return verdict


def guard_model_over(http: httpx.AsyncClient, name: str, settings: GuardSettings, api_key: str | None) -> GuardModel:
    """The guard-model rail as the settings configure it, over ``http``: the guard service beside
    the gateway, or a guard engine served at a URL (``guard_at``)."""
    if api_key:
        http.headers["Authorization"] = f"Bearer {api_key}"
    return GuardModel(http, name, FORMATS[settings.guard_format], settings.guard_timeout_s)


def guard_at(url: str, settings: GuardSettings) -> httpx.AsyncClient:
    """HTTP to an OpenAI-compatible guard engine at ``url`` (with or without its /v1)."""
    return http_client(url.rstrip("/").removesuffix("/v1"), settings.guard_timeout_s)
