"""The Markdown holds together: every relative link reaches a file of the repository, every
`#anchor` a heading of its page (GitHub's slugs), every page is reachable from the README, and the
README stays short. And docs/, the demo corpus, still answers the frozen eval set's retrieval
questions."""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The pages one task each, as issue 30 names them: each must exist and be linked from the README.
TASK_PAGES = ["running-locally", "modal", "kserve", "configuration", "guardrails", "releasing", "evaluation", "architecture"]
README_MAX_LINES = 150

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)
CODE_SPAN = re.compile(r"(`+).*?\1")
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:|^//", re.I)


@cache
def repo_files() -> frozenset[str]:
    """Tracked files and new ones not ignored: what a clone has (build/, data/, .venv/ are not)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return frozenset(out.stdout.splitlines())


def markdown_files() -> list[str]:
    return sorted(f for f in repo_files() if f.endswith(".md") and (ROOT / f).is_file())


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a link or heading inside one is only an example)."""
    lines, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links and HTML reduced to their text), lowercased,
    punctuation dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: str) -> frozenset[str]:
    """Every anchor GitHub makes in a page; a repeated heading gets -1, -2, ... as there."""
    seen: Counter[str] = Counter()
    found = set()
    for line in prose_lines((ROOT / path).read_text()):
        found.update(HTML_ANCHOR.findall(line))
        if m := HEADING.match(line):
            s = slug(m.group(2))
            found.add(s if not seen[s] else f"{s}-{seen[s]}")
            seen[s] += 1
    return frozenset(found)


def links(path: str) -> list[str]:
    """The link targets of a page, outside code."""
    targets = []
    for line in prose_lines((ROOT / path).read_text()):
        line = CODE_SPAN.sub("", line)
        targets += INLINE_LINK.findall(line) + REFERENCE.findall(line)
    return targets


def resolve(page: str, target: str) -> tuple[str, str | None]:
    """(repository path, anchor) of a relative link; the page itself for a bare #anchor."""
    where, _, anchor = target.partition("#")
    if not where:
        return page, anchor or None
    path = Path(os.path.normpath((ROOT / page).parent / unquote(where)))
    return path.relative_to(ROOT).as_posix(), anchor or None  # ValueError: outside the repository


def broken(page: str, target: str) -> str | None:
    """Why a link of ``page`` leads nowhere on GitHub, or None."""
    if SCHEME.match(target) or target.startswith("/"):
        return None  # another site, or a site-absolute path: not this repository's to check
    try:
        path, anchor = resolve(page, target)
    except ValueError:
        return "leaves the repository"
    files = repo_files()
    if path not in files and not any(f.startswith(path.rstrip("/") + "/") for f in files):
        return f"{path} is not in the repository"
    if anchor is not None and path.endswith(".md") and anchor not in anchors(path):
        return f"{path} has no heading #{anchor} (it has: {', '.join(sorted(anchors(path)))})"
    return None


@pytest.mark.parametrize("page", markdown_files())
def test_every_relative_link_and_anchor_leads_somewhere(page):
    problems = [f"[...]({t}): {why}" for t in links(page) if (why := broken(page, t))]
    assert not problems, f"{page}: fix these links or the headings they point at:\n" + "\n".join(problems)


def test_the_readme_is_short_and_links_every_task_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into a page under docs/"
    linked = {resolve("README.md", t)[0] for t in links("README.md") if not SCHEME.match(t)}
    missing = [f"docs/{p}.md" for p in TASK_PAGES if f"docs/{p}.md" not in linked]
    assert not missing, f"README.md must link each task page; it does not link {missing}"


def test_every_page_is_reachable_from_the_readme():
    reached, todo = set(), ["README.md"]
    while todo:
        page = todo.pop()
        if page in reached or not (ROOT / page).is_file():
            continue
        reached.add(page)
        todo += [p for t in links(page) if not SCHEME.match(t) and (p := resolve(page, t)[0]).endswith(".md")]
    pages = [f for f in markdown_files() if f.startswith("docs/")]
    unreached = [p for p in pages if p not in reached]
    assert not unreached, f"no chain of links from README.md leads to {unreached}: link them"


def test_slugs_follow_githubs_rules():
    assert slug("Under load and faults") == "under-load-and-faults"
    assert slug("The rails' cost") == "the-rails-cost"
    assert slug("`ragserve index`: what it does (and why)") == "ragserve-index-what-it-does-and-why"
    assert slug("Releasing: blue-green promotion with automatic rollback") == "releasing-blue-green-promotion-with-automatic-rollback"
    assert slug("A [link](x.md) and <b>bold</b> and_underscore") == "a-link-and-bold-and_underscore"


def test_the_checker_finds_what_is_broken():
    assert broken("README.md", "docs/no-such-page.md") == "docs/no-such-page.md is not in the repository"
    assert "has no heading #no-such-heading" in broken("README.md", "docs/architecture.md#no-such-heading")
    assert broken("docs/architecture.md", "../../outside.md") == "leaves the repository"
    assert broken("README.md", "data/lancedb") is not None  # ignored by git: a clone has no such file
    assert broken("docs/architecture.md", "#guard") is None and broken("docs/architecture.md", "../bentos/") is None
    assert links("docs/architecture.md")  # the parser sees the page's links at all


def test_the_demo_corpus_answers_the_promotion_eval_sets_retrieval_questions(tmp_path):
    """infra/eval/promotion.jsonl's retrieval cases name pages of docs/ (the demo corpus that
    `ragserve index docs/` and the benches index): moving text between pages must keep them true."""
    from bentos.retrieval.retriever import Retriever
    from bentos.settings import RetrievalSettings
    from conftest import build_index
    from infra.gates import read_eval_set

    build_index(tmp_path / "db", ROOT / "docs")
    retriever = Retriever(RetrievalSettings(db=str(tmp_path / "db")))
    missed = {}
    for case in read_eval_set(ROOT / "infra" / "eval" / "promotion.jsonl"):
        if case.query:
            found = [h.source for h in retriever.retrieve(case.query, 4).hits]
            if case.source not in found:
                missed[case.query] = (case.source, found)
    assert not missed, f"retrieval cases whose page is not among the 4 chunks (query: (expected, found)): {missed}"
