"""A second retrieval development set, from another domain than SQuAD: FAQs Debian ships.

The Debian FAQ (package debian-faq) and the Z shell FAQ (package zsh-common) come as plain text:
numbered questions ("3.1.2. Will there be different versions ...?", "3.4: How do I turn off
spelling correction ...?") each followed by its answer, grouped in chapters. Each answer becomes a
document (the chapter title as its heading, the question left out) and its question a query whose
gold is that document. The questions were written by the FAQs' authors, not by someone reading the
answer, so they share fewer words with it than SQuAD's do, and answers run long (a third are over
200 words): it tests chunking and the vector side where SQuAD favours full-text search.

Every query carries a part: ``dev`` (three fifths, by a hash of the question) for decisions, and
``report`` for the figures no decision looked at.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

FAQS = {  # name -> where its Debian package puts the text version
    "debian": Path("/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz"),
    "zsh": Path("/usr/share/doc/zsh-common/FAQ.gz"),
}
PACKAGES = {"debian": "debian-faq", "zsh": "zsh-common"}
MIN_ANSWER_WORDS = 15  # shorter "answers" only point at the sub-questions below them

_QUESTION = re.compile(r"^(\d+(?:\.\d+)+)[.:]\s+(\S.*)$")
_CHAPTER = re.compile(r"^Chapter \d+[.:]\s+(.*)$")
# "see Section 14.3, “I am making a special ...?”": another question's text quoted inside an answer
_CROSS_REF = re.compile(r"(Section [\d.]+),\s*“[^”]*”", re.S)


def part_of(query: str) -> str:
    return "dev" if int(hashlib.sha1(query.encode()).hexdigest()[:8], 16) % 5 < 3 else "report"


def faq(name: str, path: Path) -> tuple[dict[str, str], list[dict]]:
    """One FAQ's documents (file name under ``name``/ -> Markdown text) and queries ({"query", "gold", "part"})."""
    if not path.exists():
        package = PACKAGES.get(name, name)
        raise FileNotFoundError(f"{path} not found: install Debian's {package} package (`apt-get install {package}`)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().replace("\xa0", " ").splitlines()  # no-break spaces after "Chapter"
    entries: dict[str, tuple[str, list[str], list[str]]] = {}  # number -> (chapter, question lines, answer lines)
    chapter, current = "", None
    for line in lines:
        if m := _CHAPTER.match(line):
            chapter = m.group(1).strip()
        elif m := _QUESTION.match(line):
            current = entries[m.group(1)] = (chapter, [m.group(2)], [])  # the table of contents' entry is replaced
        elif current and line and not line[0].isspace() and not current[2]:
            current[1].append(line)  # a question wrapped over several lines
        elif current:
            current[2].append(line)
    docs: dict[str, str] = {}
    queries: list[dict] = []
    for number, (chapter, question, answer) in entries.items():
        body = _CROSS_REF.sub(r"\1", "\n".join(a.strip() for a in answer)).strip()
        if len(body.split()) < MIN_ANSWER_WORDS:
            continue
        doc = f"{name}/{number}.md"
        docs[doc] = f"# {chapter}\n\n{body}\n"
        text = " ".join(" ".join(question).split())
        if text.endswith("?"):  # not the sub-headings ("dpkg-deb", "Availability"): nobody asks those
            queries.append({"query": text, "gold": [doc], "part": part_of(text)})
    if not queries:
        raise ValueError(f"{path}: no questions found; is it the text version of a FAQ?")
    return docs, queries


def faq_set(faqs: dict[str, Path] = FAQS) -> tuple[dict[str, str], list[dict]]:
    docs: dict[str, str] = {}
    queries: list[dict] = []
    for name, path in faqs.items():
        d, q = faq(name, path)
        docs.update(d)
        queries += q
    return docs, queries


def write_set(out: Path, docs: dict[str, str], queries: list[dict]) -> tuple[Path, Path]:
    """The generic evaluation format: a folder of documents and a JSONL of queries."""
    folder = out / "docs"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    path = out / "queries.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    return folder, path
