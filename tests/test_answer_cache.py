"""The answer cache in the served gateway (RAGSERVE_CACHE=true on the session stack), through
the official openai client: hits served plain and streamed, and every way a hit must not happen."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from bentos.web.metrics import samples
from bentos.web.timing import REPLAY_HEADER
from conftest import CORPUS, SECOND_TENANT_PREFIX, build_index
from test_guardrails_gateway import metric

pytestmark = pytest.mark.stack


def ask(stack, question: str, key: str | None = None, raw: bool = False, **kw):
    """The parsed answer, or with ``raw`` the response whose ``parse()`` gives it (and its headers)."""
    client = stack.openai(api_key=key) if key else stack.openai()
    kw = {"max_tokens": 24, "temperature": 0, **kw}
    chat = client.chat.completions.with_raw_response if raw else client.chat.completions
    return chat.create(model="x", messages=[{"role": "user", "content": question}], **kw)


def streamed(stack, question: str, **kw) -> tuple[str, list]:
    chunks = list(ask(stack, question, stream=True, **kw))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_a_paraphrase_is_answered_from_the_cache_plain_and_streamed(stack):
    hits = metric(stack, "ragserve_cache_hits_total")
    first = ask(stack, "How long does a Zorblax refund take to reach my card?")
    assert first.model_extra["cache"] == {"hit": False}
    raw = ask(stack, "Could you tell me how long a Zorblax refund takes to reach my card?", raw=True)
    again = raw.parse()
    assert again.model_extra["cache"]["hit"] is True and again.model_extra["cache"]["similarity"] >= stack_threshold()
    assert raw.headers.get(REPLAY_HEADER) == "hit"  # what the router and the release gates read
    paced, timed = metric(stack, "ragserve_chat_stream_rate_count"), metric(stack, "ragserve_chat_ttft_seconds_count")
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.model_extra["citations"] == first.model_extra["citations"]
    assert again.usage.completion_tokens == first.usage.completion_tokens > 0
    text, chunks = streamed(stack, "How long does a Zorblax refund take to reach my card?")
    assert chunks[0].model_extra["cache"]["hit"] is True and chunks[0].model_extra["citations"] == first.model_extra["citations"]
    assert text == first.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it streams, word by word
    # felt as any answer, but written out without waiting: no pace to compare a release by
    assert metric(stack, "ragserve_chat_ttft_seconds_count") == timed + 1 and metric(stack, "ragserve_chat_stream_rate_count") == paced
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == first.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens
    assert metric(stack, "ragserve_cache_hits_total") == hits + 2


def test_a_streamed_answer_is_stored_as_it_was_sent(stack):
    text, chunks = streamed(stack, "Which river does Paris sit on?")
    assert chunks[0].model_extra["cache"] == {"hit": False} and text
    again = ask(stack, "Could you tell me which river Paris sits on?")
    assert again.model_extra["cache"]["hit"] is True and again.choices[0].message.content == text


# One near miss of each kind (questions a word apart, with different answers) and a paraphrase.
NEAR_MISSES = {
    "number": ("Is Zorblax shipping free on orders above $50?", "Is Zorblax shipping free on orders above $75?"),
    "date": ("Is the Zorblax office open on 24 December?", "Is the Zorblax office open on 26 December?"),
    "ordinal": ("What was Zorblax revenue in the first quarter?", "What was Zorblax revenue in the second quarter?"),
    "day": ("Is the Zorblax museum open on Monday?", "Is the Zorblax museum open on Tuesday?"),
    "month": ("Do Zorblax robots ship in March?", "Do Zorblax robots ship in April?"),
    "place": ("Do Zorblax robots ship to Canada?", "Do Zorblax robots ship to Mexico?"),
    "person": ("When was Ada Lovelace born?", "When was Alan Turing born?"),  # both masked to <PERSON>
    "comparative": ("Is the Zorblax X1 cheaper than the X2?", "Is the Zorblax X1 more expensive than the X2?"),
    "superlative": ("What is the maximum Zorblax refund?", "What is the minimum Zorblax refund?"),
    "antonym": ("How do I enable Zorblax notifications?", "How do I disable Zorblax notifications?"),
    "negation": ("Which Zorblax items can be refunded?", "Which Zorblax items cannot be refunded?"),
    "word order": ("How do I convert a list to a tuple in Python?", "How do I convert a tuple to a list in Python?"),
    "direction": ("When does the Zorblax shuttle depart?", "When does the Zorblax shuttle arrive?"),
    "code": ("What does Zorblax error 502 mean?", "What does Zorblax error 504 mean?"),
    "plan": ("How much is the Zorblax annual plan?", "How much is the Zorblax monthly plan?"),
}


def stack_threshold() -> float:
    from bentos.settings import CacheSettings

    return CacheSettings.model_fields["cache_min_similarity"].default


def test_a_near_miss_of_each_kind_is_not_served_the_other_answer_and_a_paraphrase_is(stack):
    tiny = {"max_tokens": 2}  # a bucket of its own: only these questions' entries under the key
    missed = []
    for kind, (a, b) in NEAR_MISSES.items():
        assert ask(stack, a, **tiny).model_extra["cache"] == {"hit": False}, kind
        if ask(stack, b, **tiny).model_extra["cache"] != {"hit": False}:
            missed.append(kind)
    assert missed == []  # each of these was served the other's answer by the cosine alone
    again = ask(stack, "Please, when does the Zorblax shuttle depart?", **tiny)
    assert again.model_extra["cache"]["hit"] is True


def test_no_hit_for_another_tenant_a_near_miss_or_a_sampled_answer(stack):
    question = "Within how many days of delivery can Zorblax customers get a refund?"
    assert ask(stack, question).model_extra["cache"] == {"hit": False}
    assert ask(stack, question).model_extra["cache"]["hit"] is True
    other = ask(stack, question, key=SECOND_TENANT_PREFIX + stack.api_key)
    assert other.model_extra["cache"] == {"hit": False}  # a second key is a second tenant
    near = ask(stack, "Within how many days of the order do Zorblax robots ship?")  # same document, other answer
    assert near.model_extra["cache"] == {"hit": False}
    nothing = ask(stack, "Plorf snurgle qwxz vemmet?")  # nothing relevant: the gateway answers itself
    assert nothing.model_extra["cache"] == {"hit": False} and nothing.model_extra["citations"] == []
    sampled = ask(stack, question, temperature=0.8)
    assert sampled.model_extra["cache"] == {"hit": False}
    assert ask(stack, question, temperature=0.8, extra_body={"cache": True}).model_extra["cache"]["hit"] is True  # opted in
    assert ask(stack, question, extra_body={"cache": False}).model_extra["cache"] == {"hit": False}  # opted out
    assert ask(stack, question, max_tokens=200).model_extra["cache"] == {"hit": False}  # another max_tokens bucket
    system = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": question}]
    r = stack.openai().chat.completions.create(model="x", messages=system, max_tokens=24, temperature=0)
    assert r.model_extra["cache"] == {"hit": False}  # another system message


def test_a_new_publication_empties_the_cache(stack, tmp_path):
    question = "Which email address handles Zorblax refunds?"
    ask(stack, question)
    assert ask(stack, question).model_extra["cache"]["hit"] is True
    docs = shutil.copytree(CORPUS, tmp_path / "docs")
    (docs / "canteen.md").write_text("# Canteen\n\nThe Zorblax canteen serves lunch from noon to two.\n")
    h = {"Authorization": f"Bearer {stack.api_key}"}
    version = httpx.post(f"{stack.url}/v1/retrieve", headers=h, json={"query": question, "k": 1}).json()["index_version"]
    try:
        build_index(stack.db, docs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # servers follow a publication within RAGSERVE_INDEX_REFRESH_S
            if httpx.post(f"{stack.url}/v1/retrieve", headers=h, json={"query": question, "k": 1}).json()["index_version"] != version:
                break
            time.sleep(0.3)
        assert ask(stack, question).model_extra["cache"] == {"hit": False}  # answered from the new documents
    finally:
        build_index(stack.db, CORPUS)


def masked_in_answers(stack) -> float:
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    return sum(s.value for s in samples(text) if s.name == "ragserve_guardrail_pii_masked_total" and s.labels.get("stage") == "output")


def test_what_is_stored_is_the_masked_answer(stack):
    """The cache stores what the output rails let out: the model writes personal data, the rail
    masks it, and the hit replays the masked text without any new masking to do."""
    question = "Write a short email signature with a name, an email address and a phone number."
    before = masked_in_answers(stack)
    first = ask(stack, question, max_tokens=40)
    sent = first.choices[0].message.content
    after_miss = masked_in_answers(stack)
    assert "<EMAIL>" in sent and after_miss > before, sent  # the model wrote an address; the output rail masked it
    hit = ask(stack, question, max_tokens=40)
    assert hit.model_extra["cache"]["hit"] is True and hit.choices[0].message.content == sent
    assert masked_in_answers(stack) == after_miss  # replayed as stored: already masked
