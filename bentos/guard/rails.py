"""The gateway's side of the guardrails: the NeMo Guardrails config in ``guardrails/``, one folder
per rail, run one stage at a time through NeMo's event API.

The rails and their order are the config's ``rails.input.flows``, ``rails.retrieval.flows`` and
``rails.output.flows``; ``stages.co`` (beside this file) runs each list from one event
(CheckInput, CheckRetrieval, CheckOutput) and creates one result event. A rail that blocks
creates an Input/OutputRailException naming itself (NeMo's rails exceptions, which this turns
on). Anything else, an exception in an action included, fails closed: the request is refused
with ``<stage>_rails_error`` and an error log line, never a 500.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

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
STAGES = Path(__file__).with_name("stages.co")


@dataclass
class Decision:
    text: str = ""  # the checked (masked) text when passed
    blocked_by: str | None = None
    kept: list[int] | None = None  # retrieval stage: indexes of the chunks kept (None: all)
    categories: list[str] | None = None  # guard model: the hazard categories it named

    @property
    def refusal_details(self) -> dict:
        """What a refusal's ``guardrails`` field says."""
        return {"blocked_by": self.blocked_by, **({"categories": self.categories} if self.categories is not None else {})}


def build_detectors(
    settings: GuardSettings, custom: dict, ask_model: Callable[[str], Awaitable[str]] | None = None, guard_model: GuardModel | None = None
) -> Detectors:
    """The rails' state: the classifier, the config's custom_data, report-only rails (the config's
    list and RAGSERVE_GUARD_REPORT_ONLY's together), the model to ask when self-checks are on."""
    report_only = parse_rails(custom.get("report_only"), f"{settings.guardrails_config}/config.yml custom_data.report_only")
    modes = Modes([*report_only, *parse_rails(settings.guard_report_only, "RAGSERVE_GUARD_REPORT_ONLY")])
    ask = ask_model if settings.guard_self_check else None
    detectors = Detectors(PromptClassifier.load(settings.classifier_path), custom, ask, guard_model, modes)
    detectors.mask("warm-up", "startup")  # builds Presidio's analyzer now, not on the first request
    return detectors


@cache
def _detectors_from_folder(folder: str) -> Detectors:
    from nemoguardrails import RailsConfig

    settings = GuardSettings(guardrails_config=Path(folder))
    return build_detectors(settings, RailsConfig.from_path(folder).custom_data or {})


def detectors_for(config, detectors: Detectors | None) -> Detectors:
    """What a rail's action works with: the gateway's (registered as the ``detectors`` action
    parameter), or, in NeMo's own runtime (`nemoguardrails server`/`chat`, where nothing registers
    one), one built once from the config folder: its classifier (model/prompt_classifier.npz) and
    custom_data; the query embedding is then computed by the rail itself."""
    if detectors is not None:
        return detectors
    if config is None or not config.config_path:
        raise RuntimeError("no `detectors` registered and no config folder to build them from")
    return _detectors_from_folder(config.config_path.split(",")[0])


def load_config(folder: Path, idle_actions: frozenset[str] = frozenset()):
    """The config folder as the gateway runs it: its rails, plus the stage flows, with rails
    exceptions on (how a blocking rail names itself) and no model (the gateway calls none
    through NeMo: the self-check asks the served model through the gateway's own connection).
    A listed rail whose every action is in ``idle_actions`` (nothing to ask: no guard model, the
    self-check off) is left out of the stages: each NeMo action call costs about 0.2 ms."""
    from nemoguardrails import RailsConfig

    if not (folder / "config.yml").exists():
        raise FileNotFoundError(f"no NeMo Guardrails config at {folder}: set RAGSERVE_GUARDRAILS_CONFIG to the guardrails/ folder")
    config = RailsConfig.from_path(str(folder))
    if config.colang_version != "1.0":
        raise ValueError(f"{folder}/config.yml: colang_version {config.colang_version!r}; the gateway runs Colang 1.0 rails")
    stages = stage_flows(config, folder, idle_actions)
    # The listed rails run inlined in the stages, and the gateway does not use NeMo's own pipeline:
    # they are not kept as flows of their own as well (the config NeMo's server reads keeps them).
    listed = set()
    for stage in ("input", "retrieval", "output"):
        rails = getattr(config.rails, stage)
        listed |= set(rails.flows)
        rails.flows = []
    config.flows = [f for f in config.flows if f["id"] not in listed] + stages
    config.enable_rails_exceptions = True
    config.models = []
    return config


def stage_flows(config, folder: Path, idle_actions: frozenset[str] = frozenset()) -> list[dict]:
    """The flows of stages.co, each ``do rails.<stage>.flows`` replaced by the bodies of the flows
    that config lists there, in order (a rail's ``stop`` then ends its stage, as in NeMo's own
    pipeline; Colang 1.0's jumps are relative, so a body keeps working where it is put)."""
    from nemoguardrails.colang import parse_colang_file

    defined = {f["id"]: f for f in config.flows}

    def bodies(stage: str) -> list[dict]:
        out = []
        for name in getattr(config.rails, stage).flows:
            if name not in defined:
                raise ValueError(f"{folder}/config.yml: rails.{stage}.flows lists {name!r}, which no .co file in {folder} defines")
            body = [dict(e) for e in defined[name]["elements"] if e.get("_type") != "meta"]
            actions = {e.get("action_name") for e in body if e.get("_type") == "run_action"} - {"create_event", "utter"}
            if not actions or not actions <= idle_actions:
                out += body
        return out

    flows = parse_colang_file(STAGES.name, STAGES.read_text())["flows"]
    for flow in flows:
        flow["elements"] = [
            x
            for e in flow["elements"]
            for x in (bodies(e["flow_name"].split(".")[1]) if e.get("_type") == "flow" and e["flow_name"].startswith("rails.") else [e])
        ]
    return flows


class Guard:
    def __init__(
        self,
        settings: GuardSettings,
        ask_model: Callable[[str], Awaitable[str]] | None = None,
        guard_model: GuardModel | None = None,
    ):
        from nemoguardrails import LLMRails

        logging.getLogger("nemoguardrails").setLevel(logging.WARNING)  # it logs a stats line per call
        idle = {"guard_model_check"} if guard_model is None else set()
        idle |= {"self_check"} if not settings.guard_self_check else set()
        config = load_config(settings.guardrails_config, frozenset(idle))
        self.refusal = (config.bot_messages.get("refuse to respond") or [DEFAULT_REFUSAL])[0]
        self.self_check = settings.guard_self_check
        if self.self_check and ask_model is None:
            raise ValueError("RAGSERVE_GUARD_SELF_CHECK=true needs a model to ask")
        self.detectors = build_detectors(settings, config.custom_data or {}, ask_model, guard_model)
        self.rails = LLMRails(config)
        self.rails.register_action_param("detectors", self.detectors)

    async def _run(self, stage: str, event: dict, passed: str) -> Decision:
        t0 = time.perf_counter()
        blocked = f"{stage.capitalize()}RailException"
        try:
            for e in await self.rails.generate_events_async(events=[event]):
                if e["type"] == passed:
                    return Decision(text=e.get("text", ""), kept=e.get("kept"))
                if e["type"] == blocked:
                    rail, has_categories, categories = str(e["message"]).partition(":")  # "guard_model:S1,S9"
                    GUARD_METRICS.blocked.labels(rail=rail, category=categories).inc()
                    return Decision(blocked_by=rail, categories=categories.split(",") if has_categories else None)
            raise RuntimeError(f"the {stage} stage ended without {passed} or {blocked}")
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
        event = {"type": "CheckInput", "text": text, "vector": Handle(np.asarray(vector, dtype=np.float32), "query vector")}
        return await self._run("input", event, "InputChecked")

    async def check_retrieval(self, texts: list[str], vectors: list[np.ndarray]) -> Decision:
        chunks = Handle((texts, [np.asarray(v, dtype=np.float32) for v in vectors]), f"{len(texts)} chunks")
        d = await self._run("retrieval", {"type": "CheckRetrieval", "chunks": chunks}, "RetrievalChecked")
        if d.blocked_by is None and d.kept is None:  # no retrieval rail listed: every chunk stays
            d.kept = list(range(len(texts)))
        return d

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
        }
        return await self._run("output", event, "OutputChecked")

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
