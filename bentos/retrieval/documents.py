"""Reading sources into documents and splitting them into chunks.

A document is one file (Markdown, text, HTML, PDF) or one JSONL record. Chunks follow headings and
paragraphs, carry the heading path they sit under, and overlap a little when a long paragraph must
be cut, so an answer that straddles a cut is still found whole in one chunk.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html", ".pdf": "pdf"}
RECORD_SUFFIXES = {".jsonl"}


@dataclass
class Document:
    doc_id: str
    source: str
    text: str
    title: str = ""
    metadata: dict = field(default_factory=dict)

    def content_hash(self, salt: str) -> str:
        """Changes when the text, title or metadata change, or when ``salt`` (the chunking and
        embedding configuration) changes: then the document must be embedded again."""
        h = hashlib.sha256(salt.encode())
        for part in (self.title, self.text, json.dumps(self.metadata, sort_keys=True)):
            h.update(b"\0" + part.encode())
        return h.hexdigest()


@dataclass
class Chunk:
    chunk_id: str
    doc_id: str
    source: str
    title: str
    text: str
    metadata: dict


class SourceError(ValueError):
    """A source cannot be read; the message names the file and why."""


class _HTMLText(HTMLParser):
    """Visible text of an HTML page, headings kept as Markdown headings so chunking can use them."""

    SKIP = {"script", "style", "noscript", "template", "head"}
    BLOCK = {"p", "div", "section", "article", "li", "br", "tr", "pre", "blockquote", "table", "ul", "ol"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCK:
            self.out.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCK:
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(data)

    def text(self) -> str:
        joined = "".join(self.out)
        return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+", " ", joined)).strip()


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    return parser.text()


def pdf_to_text(path: Path) -> str:
    from pypdf import PdfReader

    return "\n\n".join((page.extract_text() or "") for page in PdfReader(path).pages)


def read_file(path: Path, root: Path) -> Iterator[Document]:
    rel = path.relative_to(root).as_posix() if path != root else path.name
    suffix = path.suffix.lower()
    try:
        if suffix in RECORD_SUFFIXES:
            yield from read_jsonl(path, rel)
            return
        kind = TEXT_SUFFIXES[suffix]
        if kind == "pdf":
            text = pdf_to_text(path)
        else:
            raw = path.read_bytes().decode("utf-8")
            text = html_to_text(raw) if kind == "html" else raw
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not UTF-8 text; convert it or remove it from the folder") from None
    except OSError as e:
        raise SourceError(f"{path}: cannot be read ({e.strerror or e})") from None
    except SourceError:
        raise
    except Exception as e:  # a broken PDF raises the parser's own errors
        raise SourceError(f"{path}: cannot be parsed ({type(e).__name__}: {e})") from None
    yield Document(doc_id=rel, source=rel, text=text, title=Path(rel).stem.replace("_", " ").replace("-", " "))


def read_jsonl(path: Path, rel: str) -> Iterator[Document]:
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SourceError(f"{path}:{n}: not a JSON object ({e})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or not rec["text"].strip():
                raise SourceError(f'{path}:{n}: each line needs {{"id", "text", "source", "metadata"}} with a non-empty "text"')
            meta = rec.get("metadata") or {}
            if not isinstance(meta, dict):
                raise SourceError(f'{path}:{n}: "metadata" must be an object')
            doc_id = str(rec.get("id") or f"{rel}:{n}")
            yield Document(
                doc_id=doc_id, source=str(rec.get("source") or rel), text=rec["text"], title=str(meta.get("title", "")), metadata=meta
            )


def iter_source_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            if path.suffix.lower() in TEXT_SUFFIXES or path.suffix.lower() in RECORD_SUFFIXES:
                yield path


def read_documents(root: Path, skip_unreadable: bool = False) -> tuple[list[Document], list[str]]:
    """All documents under ``root``. Unreadable files fail the whole read (nothing half-indexed)
    unless ``skip_unreadable``; either way they are listed."""
    if not root.exists():
        raise SourceError(f"{root}: no such file or folder")
    docs: dict[str, Document] = {}
    problems: list[str] = []
    for path in iter_source_files(root):
        try:
            for doc in read_file(path, root if root.is_dir() else root.parent):
                if doc.text.strip():
                    docs[doc.doc_id] = doc
        except SourceError as e:
            problems.append(str(e))
    if problems and not skip_unreadable:
        listed = "\n  ".join(problems[:10])
        raise SourceError(f"{len(problems)} source(s) could not be read (fix them, or pass --skip-unreadable):\n  {listed}")
    return list(docs.values()), problems


# --- chunking --------------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sections(text: str) -> Iterator[tuple[list[str], str]]:
    """(heading path, body) pairs along Markdown headings."""
    path: list[str] = []
    body: list[str] = []
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            if "".join(body).strip():
                yield list(path), "\n".join(body)
            level = len(m.group(1))
            path = path[: level - 1] + [m.group(2).strip()]
            body = []
        else:
            body.append(line)
    if "".join(body).strip():
        yield list(path), "\n".join(body)


def split_words(paragraph: str, max_words: int, overlap: int) -> list[str]:
    """Cut an over-long paragraph at sentence ends (inside a sentence only when it alone is too
    long), repeating the last ``overlap`` words of each piece at the start of the next."""
    units = []
    for sentence in _SENTENCE_END.split(paragraph):
        words = sentence.split()
        units += [words[i : i + max_words] for i in range(0, len(words), max_words)]
    pieces: list[list[str]] = []
    current: list[str] = []
    for unit in units:
        if current and len(current) + len(unit) > max_words:
            pieces.append(current)
            current = current[-overlap:][: max(0, max_words - len(unit))] if overlap else []
        current = current + unit
    if current:
        pieces.append(current)
    return [" ".join(p) for p in pieces]


def chunk_document(doc: Document, max_words: int = 200, overlap: int = 30) -> list[Chunk]:
    texts: list[tuple[str, str]] = []
    for heads, body in sections(doc.text):
        title = " > ".join([doc.title, *heads] if doc.title else heads)
        current: list[str] = []
        count = 0
        for para in (p.strip() for p in re.split(r"\n\s*\n", body)):
            if not para:
                continue
            n = len(para.split())
            if current and count + n > max_words:
                texts.append((title, "\n\n".join(current)))
                current, count = [], 0
            if n > max_words:
                texts.extend((title, piece) for piece in split_words(para, max_words, overlap))
            else:
                current.append(para)
                count += n
        if current:
            texts.append((title, "\n\n".join(current)))
    return [
        Chunk(chunk_id=f"{doc.doc_id}#{i}", doc_id=doc.doc_id, source=doc.source, title=title, text=text, metadata=doc.metadata)
        for i, (title, text) in enumerate(texts)
    ]
