"""`ragserve index`, `search` and `eval retrieval` as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from bentos.tools.cli import main

BIN = Path(sys.executable).parent
CORPUS = Path(__file__).parent / "corpus"


def ragserve(*args: str, db: Path | None = None, **env_extra: str) -> subprocess.CompletedProcess:
    """The console script in a process of its own, as a user runs it."""
    env = {**os.environ, **({"RAGSERVE_DB": str(db)} if db else {}), **env_extra}
    return subprocess.run([str(BIN / "ragserve"), *args], env=env, capture_output=True, text=True, timeout=300)


def cli(*args: str) -> Result:
    """The same command line in this process: no interpreter start-up and model load per call
    (about 10 s each here). Options only, never the environment: a stack may be booting beside."""
    return CliRunner().invoke(main, list(args))


def test_index_search_rollback(tmp_path):
    db, docs = tmp_path / "db", Path(shutil.copytree(CORPUS, tmp_path / "docs"))
    r = ragserve("index", str(docs), db=db)
    assert r.returncode == 0, r.stderr
    assert "5 added" in r.stdout and "published version" in r.stdout
    r = ragserve("search", "what is the office cat called", "-k", "2", db=db)
    assert r.returncode == 0 and "office.html" in r.stdout.splitlines()[1]

    (docs / "office.html").unlink()
    r = cli("index", str(docs), "--db", str(db))
    assert "1 removed" in r.stdout and "4 unchanged" in r.stdout
    r = cli("index", "--rollback", "--db", str(db))
    assert r.exit_code == 0 and "published version" in r.stdout
    assert "office.html" in cli("search", "office cat", "--db", str(db)).stdout


def test_index_errors_name_the_fix(tmp_path):
    db = str(tmp_path / "db")
    r = cli("index", str(tmp_path / "missing"), "--db", db)
    assert r.exit_code == 1 and "no such file or folder" in r.stderr
    r = cli("index", "--db", db)
    assert r.exit_code == 2 and "PATH" in r.stderr
    r = cli("index", "--rollback", "--db", db)
    assert r.exit_code == 1 and "nothing to roll back" in r.stderr
    r = cli("search", "anything", "--db", db)
    assert r.exit_code == 1 and "ragserve index PATH" in r.stderr
    r = cli("search", "cat", "-k", "0", "--db", db)
    assert r.exit_code == 2 and "-k" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.txt").write_bytes(b"\xff\xfe")
    r = cli("index", str(bad), "--db", db)
    assert r.exit_code == 1 and "x.txt" in r.stderr and "--skip-unreadable" in r.stderr
    # A known failure is a message, never a traceback (an unexpected exception would be kept here).
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_eval_retrieval_scores_gold_paragraphs(tmp_path):
    paragraphs = [
        ("Mochi the cat sleeps on the laser printer every afternoon.", "Where does Mochi sleep?"),
        ("The Tilburg warehouse ships Zorblax robots within three days.", "Where do Zorblax robots ship from?"),
        ("Lisbon lies on the estuary of the river Tagus in Portugal.", "Which river flows past Lisbon?"),
    ]
    squad = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": c,
                        "qas": [
                            {"id": str(i), "question": q, "is_impossible": False},
                            {"id": f"u{i}", "question": "Who won?", "is_impossible": True},
                        ],
                    }
                    for i, (c, q) in enumerate(paragraphs)
                ],
            }
        ]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    r = ragserve("eval", "retrieval", "--squad", str(path), "--json-out", str(tmp_path / "out.json"), TMPDIR=str(scratch))
    assert r.returncode == 0, r.stderr
    assert not list(scratch.glob("ragserve-eval-*")), "the evaluation index was left behind"
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["answerable_questions"] == 3 and out["unanswerable_questions"] == 3
    assert out["recall@1"] == 1.0 and out["mrr@10"] == 1.0
    # the anchors, scored in the same run on the same documents
    assert set(out["baselines"]) == {"lancedb vector", "lancedb hybrid rrf", "lancedb full-text"}
    assert all(0 <= f["recall@1"] <= f["recall@5"] <= 1 for f in out["baselines"].values())
    assert "lancedb vector" in r.stdout and "ragserve (this project)" in r.stdout
    (tmp_path / "bad.json").write_text("[]")
    r = ragserve("eval", "retrieval", "--squad", str(tmp_path / "bad.json"))
    assert r.returncode == 1 and "SQuAD" in r.stderr


def write_generic(tmp_path: Path, queries: list) -> tuple[Path, Path]:
    docs = tmp_path / "docs"
    (docs / "pets").mkdir(parents=True)
    (docs / "pets" / "mochi.md").write_text("# Cats\n\nMochi the cat sleeps on the laser printer every afternoon.\n")
    (docs / "robots.txt").write_text("The Tilburg warehouse ships Zorblax robots within three days.\n")
    (docs / "lisbon.txt").write_text("Lisbon lies on the estuary of the river Tagus in Portugal.\n")
    path = tmp_path / "queries.jsonl"
    path.write_text("".join((q if isinstance(q, str) else json.dumps(q)) + "\n" for q in queries))
    return docs, path


def test_eval_retrieval_on_a_folder_and_queries_by_source(tmp_path):
    docs, queries = write_generic(
        tmp_path,
        [
            {"query": "Where does Mochi sleep?", "gold": ["pets/mochi.md"], "part": "dev"},
            {"query": "Where do Zorblax robots ship from?", "gold": ["robots.txt"], "part": "report"},
            {"query": "Which river flows past Lisbon?", "gold": ["lisbon.txt", "robots.txt"], "part": "report"},
        ],
    )
    out = tmp_path / "out.json"
    r = cli("eval", "retrieval", "--docs", str(docs), "--queries", str(queries), "--json-out", str(out))
    assert r.exit_code == 0, r.output
    figures = json.loads(out.read_text())
    assert figures["answerable_questions"] == 3 and figures["documents"] == 3
    assert figures["recall@1"] == 1.0
    assert figures["baselines"]["lancedb vector"]["recall@5"] == 1.0
    r = cli("eval", "retrieval", "--docs", str(docs), "--queries", str(queries), "--part", "report", "--json-out", str(out))
    assert r.exit_code == 0 and json.loads(out.read_text())["answerable_questions"] == 2


def test_eval_retrieval_names_what_is_wrong_with_a_query_file(tmp_path):
    cases = [
        ({"query": "Where does Mochi sleep?", "gold": ["pets/nope.md"]}, "pets/nope.md"),  # gold not among the documents
        ({"query": "   ", "gold": ["robots.txt"]}, 'non-empty "query"'),
        ({"query": "Where?", "gold": []}, '"gold"'),
        ("{not json", "not JSON"),
    ]
    for i, (bad, message) in enumerate(cases):
        docs, queries = write_generic(tmp_path / str(i), [{"query": "Which river flows past Lisbon?", "gold": ["lisbon.txt"]}, bad])
        r = cli("eval", "retrieval", "--docs", str(docs), "--queries", str(queries))
        assert r.exit_code == 1 and message in r.output and f"{queries}:2" in r.output, r.output
    docs, queries = write_generic(tmp_path / "good", [{"query": "Which river flows past Lisbon?", "gold": ["lisbon.txt"]}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    r = cli("eval", "retrieval", "--docs", str(docs), "--queries", str(empty))
    assert r.exit_code == 1 and "no queries" in r.output
    r = cli("eval", "retrieval", "--docs", str(docs), "--queries", str(queries), "--part", "validation")
    assert r.exit_code == 1 and '"part": "validation"' in r.output
    r = cli("eval", "retrieval", "--docs", str(docs))
    assert r.exit_code == 2 and "--queries" in r.output
    r = cli("eval", "retrieval")
    assert r.exit_code == 2 and "--squad" in r.output
    (tmp_path / "nothing").mkdir()
    r = cli("eval", "retrieval", "--docs", str(tmp_path / "nothing"), "--queries", str(queries))
    assert r.exit_code == 1 and "no documents" in r.output


DEBIAN_STYLE = """Table of Contents
1. Definitions
1.1. What is this FAQ?

Chapter 1. Definitions and overview

1.1. What is this FAQ?

    This document answers questions frequently asked about Debian, written
    by volunteers over many years and kept with the distribution itself.

1.2. What is the difference between Debian and other
distributions? Why choose Debian?

    Debian is made by volunteers; see Section 1.1, “What is this FAQ?” for
    more on this FAQ and where the packaging tools came from originally.

1.2.1. dpkg-deb

    A tool that packs and unpacks Debian archives, used by dpkg itself
    under the hood for every package it installs on the system.
"""

ZSH_STYLE = """Chapter 1:  Introducing zsh
1.1. What is it?

Chapter 1: Introducing zsh and how to install it

1.1: What is it?


Zsh is a UNIX command interpreter (shell) which of the standard
  shells most resembles the Korn shell; it includes enhancements of
  many types, notably in the command-line editor.
"""


def test_faq_set_turns_questions_into_queries_and_answers_into_documents(tmp_path):
    (tmp_path / "debian.txt").write_text(DEBIAN_STYLE)
    (tmp_path / "zsh.txt").write_text(ZSH_STYLE)
    r = cli("eval", "faq-set", str(tmp_path / "set"), "--faq", f"debian={tmp_path / 'debian.txt'}", "--faq", f"zsh={tmp_path / 'zsh.txt'}")
    assert r.exit_code == 0, r.output
    queries = [json.loads(line) for line in (tmp_path / "set" / "queries.jsonl").read_text().splitlines()]
    assert [(q["query"], q["gold"]) for q in queries] == [
        ("What is this FAQ?", ["debian/1.1.md"]),
        ("What is the difference between Debian and other distributions? Why choose Debian?", ["debian/1.2.md"]),
        ("What is it?", ["zsh/1.1.md"]),
    ]  # the table of contents' entries replaced by the answers; "dpkg-deb" is a heading, not a question
    assert {q["part"] for q in queries} <= {"dev", "report"}
    answer = (tmp_path / "set" / "docs" / "debian" / "1.2.md").read_text()
    assert answer.startswith("# Definitions and overview") and "What is this FAQ" not in answer  # no other question quoted
    assert (tmp_path / "set" / "docs" / "debian" / "1.2.1.md").exists()  # still a document to search
    r = cli("eval", "faq-set", str(tmp_path / "x"), "--faq", f"zsh={tmp_path / 'missing.gz'}")
    assert r.exit_code == 1 and "apt-get install zsh-common" in r.output
    r = cli("eval", "faq-set", str(tmp_path / "x"), "--faq", "zsh")
    assert r.exit_code == 2 and "NAME=PATH" in r.output
