"""A new user's first contact: the stack has just logged that it is ready (nothing has probed
/readyz for them), and the README's client code is the first request it gets. The session's
ordering runs this before any other test touches the stack (see conftest.py)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import re
from pathlib import Path

import pytest

from bentos.web.logs import READY_MESSAGE
from conftest import log_lines

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = [pytest.mark.stack, pytest.mark.first_contact]


def readme_snippet() -> str:
    """The README's first Python block: what a user pastes after `make serve`."""
    return re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)


def test_the_readme_snippet_is_answered_as_soon_as_the_ready_line_appears(stack):
    code = readme_snippet()
    assert "http://127.0.0.1:3000/v1" in code and "unused-on-loopback" in code
    # The session stack listens on a free port and requires a key; nothing else changes.
    code = code.replace("http://127.0.0.1:3000/v1", f"{stack.url}/v1").replace("unused-on-loopback", stack.api_key)
    [ready] = log_lines(stack.log_path, READY_MESSAGE)
    assert ready["url"] == f"{stack.url}/v1" and ready["seconds"] > 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})
    assert "paris" in out.getvalue().lower()

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
