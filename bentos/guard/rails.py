"""The gateway's side of the guardrails: the NeMo Guardrails config in ``guardrails/``, run one
stage at a time through NeMo's event API.

Each stage sends one event (CheckInput, CheckRetrieval, CheckOutput) and reads the one result
event its Colang flow creates. Anything else, an exception in an action included, fails closed:
the request is refused with ``<stage>_rails_error`` and an error log line, never a 500.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from bentos.guard.classifier import PromptClassifier
from bentos.guard.detectors import Detectors, Handle
from bentos.guard.guard_model import GuardModel
from bentos.guard.metrics import GUARD_METRICS
from bentos.guard.modes import Modes, parse_rails
from bentos.guard.pii import StreamMasker
from bentos.settings import GuardSettings

log = logging.getLogger("bentos.guard")

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."


@dataclass
class Decision:
    text: str = ""  # the checked (masked) text when passed
    blocked_by: str | None = None
    kept: list[int] | None = None  # retrieval stage: indexes of the chunks kept
    categories: list[str] | None = None  # guard model: the hazard categories it named

    @property
    def refusal_details(self) -> dict:
        """What a refusal's ``guardrails`` field says."""
        return {"blocked_by": self.blocked_by, **({"categories": self.categories} if self.categories is not None else {})}


class Guard:
    def __init__(
        self,
        settings: GuardSettings,
        ask_model: Callable[[str], Awaitable[str]] | None = None,
        guard_model: GuardModel | None = None,
    ):
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
        # report-only rails: the config's list and RAGSERVE_GUARD_REPORT_ONLY's, together
        report_only = parse_rails(custom.get("report_only"), f"{settings.guardrails_config}/config.yml custom_data.report_only")
        modes = Modes([*report_only, *parse_rails(settings.guard_report_only, "RAGSERVE_GUARD_REPORT_ONLY")])
        self.detectors = Detectors(PromptClassifier.load(settings.classifier_path), custom, ask_model, guard_model, modes)
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
                    rail, has_categories, categories = e["rail"].partition(":")  # "guard_model:S1,S9"
                    GUARD_METRICS.blocked.labels(rail=rail, category=categories).inc()
                    return Decision(blocked_by=rail, categories=categories.split(",") if has_categories else None)
            raise RuntimeError(f"the {stage} flow ended without {passed} or {blocked}")
        except Exception as e:  # fail closed: a rail that cannot decide refuses
            rail = f"{stage}_rails_error"
            GUARD_METRICS.errors.labels(stage=stage).inc()
            GUARD_METRICS.blocked.labels(rail=rail, category="").inc()
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
                "guard_model": self.guard_model,
            },
            "InputChecked",
            "InputBlocked",
        )

    async def check_retrieval(self, texts: list[str], vectors: list[np.ndarray]) -> Decision:
        chunks = Handle((texts, [np.asarray(v, dtype=np.float32) for v in vectors]), f"{len(texts)} chunks")
        return await self._run("retrieval", {"type": "CheckRetrieval", "chunks": chunks}, "RetrievalChecked", "RetrievalBlocked")

    async def check_output(
        self, text: str, sources: list[str], prompt: str = "", format_fixed: bool = False, partial: bool = False
    ) -> Decision:
        """``prompt``: the (masked) user message the answer replies to, which the guard model reads
        with it; ``partial``: a streamed answer so far, moderated and masked, nothing added."""
        event = {
            "type": "CheckOutput",
            "text": text,
            "prompt": prompt,
            "sources": sources,
            "format_fixed": format_fixed,
            "partial": partial,
            "self_check": self.self_check,
            "guard_model": self.guard_model,
        }
        return await self._run("output", event, "OutputChecked", "OutputBlocked")

    @property
    def guard_model(self) -> bool:
        """A guard model is connected: the flows ask it."""
        return self.detectors.guard_model is not None

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


# Where a streamed answer is moderated before it goes out: a sentence's end.
SENTENCE_END = re.compile(r"[.!?:;]\s|\n")


class StreamGuard:
    """Output rails on a stream, per choice: personal data masked as the text flows (held back
    only while a match may still be growing), then at the end of each choice the output flow
    runs on the whole answer and whatever it adds (a source list) goes out with the last piece.

    With a guard model, text goes out only once the guard has judged the answer up to it: at
    each sentence's end, or every ``every_tokens`` pieces without one, the answer so far is
    moderated; unsafe ends the choice with ``finish_reason: "content_filter"`` and nothing of
    the text it judged goes out. A stream's text waits at most one window for its verdict."""

    def __init__(self, guard: Guard, sources: list[str], prompt: str = "", format_fixed: bool = False, every_tokens: int = 32):
        self.guard, self.sources, self.prompt, self.format_fixed = guard, sources, prompt, format_fixed
        self.every_tokens = every_tokens
        self.maskers: dict[int, StreamMasker] = {}
        self.sent: dict[int, str] = {}  # released to the client
        self.held: dict[int, str] = {}  # masked, waiting for the guard model's verdict
        self.pieces: dict[int, int] = {}  # pieces since the last verdict
        self.cut: set[int] = set()  # choices ended by a block: the rest of their stream is dropped

    @property
    def finished(self) -> bool:
        """Every choice seen so far was cut: the client has its answer; the model can stop."""
        return bool(self.cut) and self.cut >= set(self.maskers)

    def _blocked(self, i: int, choice: dict, d: Decision) -> dict:
        self.cut.add(i)
        return {**choice, "delta": {"content": ""}, "finish_reason": "content_filter", "guardrails": d.refusal_details}

    async def choice(self, choice: dict) -> dict | None:
        """The choice as the client gets it; None: drop it (its stream was cut)."""
        i = choice.get("index", 0)
        if i in self.cut:
            return None
        masker = self.maskers.setdefault(i, StreamMasker())
        delta = choice.get("delta") or {}
        text = self.held.pop(i, "") + (masker.feed(delta["content"]) if isinstance(delta.get("content"), str) else "")
        if choice.get("finish_reason"):
            text += masker.finish()
            so_far = self.sent.get(i, "") + text
            d = await self.guard.check_output(so_far, self.sources, self.prompt, self.format_fixed)
            if d.blocked_by:
                if self.guard.guard_model:  # nothing it judged unsafe goes out
                    return self._blocked(i, choice, d)
                return {**choice, "delta": {"content": text}, "finish_reason": "content_filter", "guardrails": d.refusal_details}
            if d.text.startswith(so_far):
                text += d.text[len(so_far) :]
        elif self.guard.guard_model and text:
            self.pieces[i] = self.pieces.get(i, 0) + 1
            if not (SENTENCE_END.search(text) or self.pieces[i] >= self.every_tokens):
                self.held[i], text = text, ""
            else:
                self.pieces[i] = 0
                d = await self.guard.check_output(self.sent.get(i, "") + text, self.sources, self.prompt, self.format_fixed, partial=True)
                if d.blocked_by:
                    return self._blocked(i, choice, d)
        self.sent[i] = self.sent.get(i, "") + text
        if "content" in delta or text:
            return {**choice, "delta": {**delta, "content": text}}
        return choice
