"""A new user's first contact, the README's quickstart run as written: `make serve` is the session
stack (it runs `bentoml serve .` as the Makefile's serve target does, and has just logged that it
is ready; nothing has probed /readyz for them), the quickstart's other commands run as written
against that stack's index, and the README's client code is the first request the stack gets. Its
answer must cite the folder the quickstart indexed. The session's ordering runs this before any
other test touches the stack (see conftest.py)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import os
import re
import shlex
import subprocess
import time

import httpx
import pytest

from bentos.web.logs import READY_MESSAGE
from conftest import CORPUS, ROOT, build_index, log_lines

README = ROOT / "README.md"

pytestmark = [pytest.mark.stack, pytest.mark.first_contact]


def readme_block(heading: str, lang: str) -> str:
    """The first ```lang block under the README's `## heading`."""
    section = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", README.read_text(), re.S | re.M)
    assert section, f"README.md has no '## {heading}' section"
    block = re.search(rf"^```{lang}\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, f"README.md's '## {heading}' has no ```{lang} block"
    return block.group(1)


def quickstart_commands() -> list[str]:
    """The quickstart's shell commands, comments dropped."""
    lines = [re.sub(r"(^|\s+)#.*$", "", line).strip() for line in readme_block("Quickstart", "bash").splitlines()]
    return [line for line in lines if line]


def test_the_readme_quickstart_runs_as_written_and_its_answer_cites_the_indexed_folder(stack):
    serve, *commands = quickstart_commands()
    # Terminal 1 is the session stack: `make serve` ends in `bentoml serve .`, which it runs.
    assert serve == "make serve"
    assert re.search(r"^serve:.*\n\t\$\(BIN\)/bentoml serve \.$", (ROOT / "Makefile").read_text(), re.M)
    [ready] = log_lines(stack.log_path, READY_MESSAGE)
    assert ready["url"] == f"{stack.url}/v1" and ready["seconds"] > 0

    # Terminal 2, as written, against the index the stack reads (the default ./data/lancedb is
    # what `make serve` reads; the session stack reads its own).
    [indexed] = [shlex.split(c)[-1] for c in commands if shlex.split(c)[1:2] == ["index"]]
    folder = ROOT / indexed
    pages = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    try:
        for command in commands:
            run = subprocess.run(
                command, shell=True, cwd=ROOT, env={**os.environ, "RAGSERVE_DB": str(stack.db)}, capture_output=True, text=True
            )
            assert run.returncode == 0, f"{command}: {run.stderr[-2000:]}"
        assert "published version" in run.stdout

        # The README's client code, on the session stack's address and key (it listens on a free
        # port and requires a key); nothing else changes.
        code = readme_block("Quickstart", "python")
        assert "http://127.0.0.1:3000/v1" in code and "unused-on-loopback" in code
        code = code.replace("http://127.0.0.1:3000/v1", f"{stack.url}/v1").replace("unused-on-loopback", stack.api_key)
        out, names = io.StringIO(), {}
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), names)
        answer = names["r"]
        cited = [c["source"] for c in answer.citations]
        assert answer.choices[0].finish_reason != "content_filter" and answer.choices[0].message.content
        assert cited and set(cited) <= pages, f"cited {cited}; {indexed} holds {sorted(pages)}"
        assert cited[0] in out.getvalue()
    finally:
        build_index(stack.db, CORPUS)  # leave the shared stack's corpus as the other tests expect it
    follows_the_test_corpus(stack)

    # and no 503 after it: a burst of first requests, plain and streamed, all answered
    client = stack.openai()

    def ask(i: int) -> str:
        r = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            max_tokens=8,
            stream=bool(i % 2),
            messages=[{"role": "user", "content": "What is the capital of Portugal?"}],
        )
        return "".join(c.choices[0].delta.content or "" for c in r if c.choices) if i % 2 else r.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert all(pool.map(ask, range(6)))
    assert not log_lines(stack.log_path, '"status": 503', timeout_s=0)


def follows_the_test_corpus(stack, timeout_s: float = 10) -> None:
    """Waits until the stack serves tests/corpus again (it follows a publication within 1 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.post(
            f"{stack.url}/v1/retrieve",
            json={"query": "What is the capital of Portugal?", "k": 1},
            headers={"Authorization": f"Bearer {stack.api_key}"},
            timeout=60,
        )
        if r.json()["chunks"][0]["source"] == "geography.md" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert r.json()["chunks"][0]["source"] == "geography.md"
