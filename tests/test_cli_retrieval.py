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
    (tmp_path / "bad.json").write_text("[]")
    r = ragserve("eval", "retrieval", "--squad", str(tmp_path / "bad.json"))
    assert r.returncode == 1 and "SQuAD" in r.stderr
