"""`make serve` with a guard model: a third service with a second vLLM engine (the SmolLM2 folder
stands in for Llama Guard, whose weights no package ships), asked about every turn."""

from __future__ import annotations

import httpx
import psutil

from bentos.web.metrics import samples


def scrape(stack) -> list:
    return list(samples(httpx.get(f"{stack.url}/metrics", timeout=10).text))


def verdicts(stack, stage: str) -> float:
    return sum(s.value for s in scrape(stack) if s.name == "ragserve_guard_model_verdicts_total" and s.labels["stage"] == stage)


def test_three_services_start_and_the_guard_engine_runs_beside_the_model(guard_stack):
    services = [" ".join(p.cmdline()) for p in guard_stack.server.children(recursive=True)]
    engines = [c for c in services if "--served-model-name" in c]
    assert len(engines) == 2 and any("--served-model-name guard" in c for c in engines), engines
    # One scrape of the gateway sees both engines, told apart by their model name.
    names = {s.labels.get("model_name") for s in scrape(guard_stack) if s.name.startswith("vllm:")}
    assert {"guard", "SmolLM2-135M-Instruct"} <= names, names


def test_every_turn_is_judged_by_the_guard_engine_and_answered(guard_stack):
    client = guard_stack.openai()
    before_in, before_out = verdicts(guard_stack, "input"), verdicts(guard_stack, "output")
    r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16)
    choice = r.choices[0]
    assert verdicts(guard_stack, "input") == before_in + 1  # the stand-in's answer parsed as a verdict
    if choice.finish_reason == "content_filter":  # the stand-in judges at random: either is a real outcome
        assert r.model_extra["guardrails"]["blocked_by"] == "guard_model"
        assert all(c.startswith("S") for c in r.model_extra["guardrails"]["categories"])
    else:
        assert choice.message.content and verdicts(guard_stack, "output") == before_out + 1


def test_a_streamed_answer_is_moderated_as_it_goes(guard_stack):
    client = guard_stack.openai()
    before = verdicts(guard_stack, "output")
    stream = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Where is the office Wi-Fi password?"}], max_tokens=48, stream=True
    )
    finish = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
    assert finish and finish[-1] in ("stop", "length", "content_filter")
    assert verdicts(guard_stack, "output") > before or finish[-1] == "content_filter"
    assert psutil.Process(guard_stack.server.pid).is_running()
