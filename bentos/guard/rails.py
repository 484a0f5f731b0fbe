"""The gateway's side of the guardrails: the NeMo Guardrails config in ``guardrails/``, run one
stage at a time through NeMo's event API.

Each stage sends one event (CheckInput, CheckRetrieval, CheckOutput) and reads the one result
event its Colang flow creates. Anything else, an exception in an action included, fails closed:
the request is refused with ``<stage>_rails_error`` and an error log line, never a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from bentos.guard.classifier import PromptClassifier
from bentos.guard.detectors import Detectors, Handle
from bentos.guard.metrics import GUARD_METRICS
from bentos.settings import Settings

log = logging.getLogger("bentos.guard")

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."


@dataclass
class Decision:
    text: str = ""  # the checked (masked) text when passed
    blocked_by: str | None = None
    kept: list[int] | None = None  # retrieval stage: indexes of the chunks kept


class Guard:
    def __init__(self, settings: Settings, ask_model: Callable[[str], Awaitable[str]] | None = None):
        from nemoguardrails import LLMRails, RailsConfig

        logging.getLogger("nemoguardrails").setLevel(logging.WARNING)  # it logs a stats line per call
        if not (settings.guardrails_config / "config.yml").exists():
            raise FileNotFoundError(
                f"no NeMo Guardrails config at {settings.guardrails_config}: set RAGSERVE_GUARDRAILS_CONFIG to the guardrails/ folder"
            )
        config = RailsConfig.from_path(str(settings.guardrails_config))
        custom = config.custom_data or {}
        self.refusal = custom.get("refusal", DEFAULT_REFUSAL)
        self.self_check = settings.guard_self_check
        if self.self_check and ask_model is None:
            raise ValueError("RAGSERVE_GUARD_SELF_CHECK=true needs a model to ask")
        self.detectors = Detectors(PromptClassifier.load(settings.classifier_path), custom, ask_model)
        self.detectors.mask("warm-up", "startup")  # builds Presidio's analyzer now, not on the first request
        self.rails = LLMRails(config)
        self.rails.register_action_param("detectors", self.detectors)

    async def _run(self, stage: str, event: dict, passed: str, blocked: str) -> Decision:
        t0 = time.perf_counter()
        try:
            for e in await self.rails.generate_events_async(events=[event]):
                if e["type"] == passed:
                    return Decision(text=e.get("text", ""), kept=e.get("kept"))
                if e["type"] == blocked:
                    GUARD_METRICS.blocked.labels(rail=e["rail"]).inc()
                    return Decision(blocked_by=e["rail"])
            raise RuntimeError(f"the {stage} flow ended without {passed} or {blocked}")
        except Exception as e:  # fail closed: a rail that cannot decide refuses
            rail = f"{stage}_rails_error"
            GUARD_METRICS.errors.labels(stage=stage).inc()
            GUARD_METRICS.blocked.labels(rail=rail).inc()
            log.error(
                "guardrail failed, request refused (fail closed)", extra={"fields": {"stage": stage, "error": f"{type(e).__name__}: {e}"}}
            )
            return Decision(blocked_by=rail)
        finally:
            GUARD_METRICS.seconds.labels(stage=stage).observe(time.perf_counter() - t0)

    async def check_input(self, text: str, vector: np.ndarray) -> Decision:
        return await self._run(
            "input",
            {
                "type": "CheckInput",
                "text": text,
                "vector": Handle(np.asarray(vector, dtype=np.float32), "query vector"),
                "self_check": self.self_check,
            },
            "InputChecked",
            "InputBlocked",
        )

    async def check_retrieval(self, texts: list[str], vectors: list[np.ndarray]) -> Decision:
        chunks = Handle((texts, [np.asarray(v, dtype=np.float32) for v in vectors]), f"{len(texts)} chunks")
        return await self._run("retrieval", {"type": "CheckRetrieval", "chunks": chunks}, "RetrievalChecked", "RetrievalBlocked")

    async def check_output(self, text: str, sources: list[str], format_fixed: bool = False) -> Decision:
        event = {"type": "CheckOutput", "text": text, "sources": sources, "format_fixed": format_fixed, "self_check": self.self_check}
        return await self._run("output", event, "OutputChecked", "OutputBlocked")

    def mask(self, text: str) -> str:
        """Earlier turns of the conversation, which the input flow (last message only) does not see."""
        return self.detectors.mask(text, "history")


def masked_conversation(guard: Guard, messages: list[dict], last_user_text: str) -> list[dict]:
    """The conversation as the model may see it: the last user message as the input flow
    returned it (masked), every other text masked too (earlier turns can carry personal data)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    out = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if i == last_user:
            content = last_user_text
        elif isinstance(content, str):
            content = guard.mask(content)
        elif isinstance(content, list):
            content = [
                {**p, "text": guard.mask(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str) else p for p in content
            ]
        out.append({**m, "content": content})
    return out


class StreamGuard:
    """Output rails on a stream, per choice: personal data masked as the text flows (held back
    only while a match may still be growing), then at the end of each choice the output flow
    runs on the whole answer and whatever it adds (a source list) goes out with the last piece."""

    def __init__(self, guard: Guard, sources: list[str], format_fixed: bool = False):
        from bentos.guard.pii import StreamMasker

        self.guard, self.sources, self.format_fixed = guard, sources, format_fixed
        self.maskers: dict[int, StreamMasker] = {}
        self.sent: dict[int, str] = {}
        self._new = StreamMasker

    async def choice(self, choice: dict) -> dict:
        i = choice.get("index", 0)
        masker = self.maskers.setdefault(i, self._new())
        delta = choice.get("delta") or {}
        text = masker.feed(delta["content"]) if isinstance(delta.get("content"), str) else ""
        if choice.get("finish_reason"):
            text += masker.finish()
            so_far = self.sent.get(i, "") + text
            d = await self.guard.check_output(so_far, self.sources, self.format_fixed)
            if d.blocked_by:
                return {**choice, "delta": {"content": text}, "finish_reason": "content_filter", "guardrails": {"blocked_by": d.blocked_by}}
            if d.text.startswith(so_far):
                text += d.text[len(so_far) :]
        self.sent[i] = self.sent.get(i, "") + text
        if "content" in delta or text:
            return {**choice, "delta": {**delta, "content": text}}
        return choice
