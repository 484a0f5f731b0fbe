"""The index on object storage: the real LanceDB against a real S3 API (moto's server) on
loopback, the `ragserve` CLI and reader processes as users run them, and the writer lease."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest

from bentos.retrieval.lease import LEASE, LeaseError, S3Lease, single_writer
from bentos.retrieval.storage import Location
from conftest import record

BIN = Path(sys.executable).parent
CORPUS = Path(__file__).parent / "corpus"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on loopback (as `ragserve bench index` starts it), and the environment a
    user would set for it."""
    from bentos.tools.bench_retrieval import loopback_s3

    with loopback_s3("ragserve") as (_, options):
        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": options["endpoint"],
            "RAGSERVE_DB_STORAGE_OPTIONS": json.dumps({"allow_http": "true"}),
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def ragserve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ragserve"), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def corpus(tmp_path) -> Path:
    return Path(shutil.copytree(CORPUS, tmp_path / "docs"))


def uri(request) -> str:
    return f"s3://ragserve/{request.node.name}"


def sources(db: str, query: str) -> list[str]:
    """What the gateway's retriever finds for ``query`` in the published version (in this process)."""
    from bentos.retrieval.retriever import Retriever
    from bentos.settings import RetrievalSettings

    return [h.source for h in Retriever(RetrievalSettings(db=db, index_refresh_s=0.01)).retrieve(query, 3).relevant]


def test_index_search_reindex_and_rollback_on_s3(s3, corpus, request):
    db = uri(request)
    first = ragserve("index", str(corpus), "--db", db)
    assert first.returncode == 0, first.stderr
    assert "published version" in first.stdout and db in first.stdout
    found = ragserve("search", "How many days do customers have to ask for a refund?", "--db", db)
    assert found.returncode == 0 and "handbook.md" in found.stdout.splitlines()[1], found.stdout + found.stderr
    # Incremental: one document changed, the rest not embedded again.
    (corpus / "office.html").unlink()
    (corpus / "parking.md").write_text("# Parking\n\nVisitors park in garage Q7, level 2.\n")
    second = ragserve("index", str(corpus), "--db", db)
    assert second.returncode == 0, second.stderr
    assert "1 added, 0 updated, 1 removed, 4 unchanged" in second.stdout, second.stdout
    assert sources(db, "Where do visitors park?")[0] == "parking.md"
    back = ragserve("index", "--rollback", "--db", db)
    assert back.returncode == 0 and "again in " + db in back.stdout, back.stderr
    assert "parking.md" not in sources(db, "Where do visitors park?") and "office.html" in sources(db, "What is the office cat called?")


def test_nothing_published_and_bad_uris_get_clear_errors(s3, request):
    empty = ragserve("search", "anything", "--db", uri(request))
    assert empty.returncode == 1 and "nothing is published" in empty.stderr
    bad = ragserve("search", "anything", "--db", "ftp://host/index")
    assert bad.returncode != 0 and "s3://" in bad.stderr


READER = textwrap.dedent("""
    import sys, time
    from bentos.retrieval.retriever import Retriever
    from bentos.settings import RetrievalSettings

    # What the gateway does per request: the published version, searched, the relevance gate applied.
    retriever = Retriever(RetrievalSettings(db=sys.argv[1], index_refresh_s=0.2))
    print("ready", flush=True)
    while True:
        r = retriever.retrieve("Where do visitors park their cars?", 3)
        if r.relevant and r.relevant[0].source == "parking.md":
            print("answered", r.version, time.time(), flush=True)
            break
        time.sleep(0.05)
""")


def test_readers_in_other_processes_follow_a_publication(s3, corpus, request):
    """Two reader processes searching the index as the gateway does, while a new version is
    published: each answers from it within its refresh interval."""
    from bentos.retrieval.documents import read_documents
    from bentos.retrieval.embedder import get_embedder
    from bentos.retrieval.index import IndexStore

    db = uri(request)
    store = IndexStore(db, {"allow_http": "true"})
    store.reindex(read_documents(corpus)[0], get_embedder())
    readers = [
        subprocess.Popen([sys.executable, "-c", READER, db], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)
    ]
    try:
        for r in readers:
            assert r.stdout.readline().strip() == "ready"
        (corpus / "parking.md").write_text("# Parking\n\nVisitors park their cars in garage Q7, level 2.\n")
        version = store.reindex(read_documents(corpus)[0], get_embedder()).version
        published = time.time()
        answered = [r.stdout.readline().split() for r in readers]
    finally:
        for r in readers:
            r.kill()
            r.wait(10)
    lags = [round((float(a[2]) - published) * 1000) for a in answered]
    record(f"S3 (moto on loopback): publication to an answer from it in another process: {lags} ms (refresh 0.2 s)")
    assert all(a[0] == "answered" and int(a[1]) == version for a in answered), answered
    assert max(lags) < 5000


HOLDER = textwrap.dedent("""
    import sys, time
    from bentos.retrieval.lease import single_writer
    from bentos.retrieval.storage import Location

    with single_writer(Location.of(sys.argv[1], {"allow_http": "true"}), ttl_s=float(sys.argv[2])):
        print("held", flush=True)
        time.sleep(3600)
""")


def test_one_writer_on_s3_and_a_dead_writers_lease_expires(s3, corpus, request):
    db = uri(request)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, db, "6"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = ragserve("index", str(corpus), "--db", db)
        assert refused.returncode == 1 and "another re-index holds" in refused.stderr and "wait for it" in refused.stderr
        holder.send_signal(signal.SIGKILL)  # no release: the lease stays until it expires
        holder.wait(10)
        with pytest.raises(LeaseError, match="another re-index holds"):
            with single_writer(Location.of(db, {"allow_http": "true"})):
                pass
        key = db.removeprefix("s3://ragserve/") + "/" + LEASE
        expires = json.loads(boto3.client("s3").get_object(Bucket="ragserve", Key=key)["Body"].read())["expires"]
        time.sleep(max(0.0, expires - time.time()) + 0.2)
        taken = ragserve("index", str(corpus), "--db", db)
        assert taken.returncode == 0, taken.stderr
        assert "published version" in taken.stdout
    finally:
        holder.kill()
        holder.wait(10)
    # a finished writer leaves no lease behind
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket="ragserve", Prefix=key)


def test_a_writer_that_lost_its_lease_publishes_nothing(s3, request):
    location = Location.of(uri(request), {"allow_http": "true"})
    with single_writer(location, ttl_s=2.0) as lease:
        assert isinstance(lease, S3Lease)
        # Another writer took over while this one stalled: the object now carries its ETag.
        lease.s3.put_object(Bucket=lease.bucket, Key=lease.key, Body=b'{"owner": "other", "expires": 9e9}')
        time.sleep(1.5)  # one renewal (every ttl/3) finds the lease gone
        with pytest.raises(LeaseError, match="taken over"):
            lease.check()
    # and leaves the other writer's lease alone
    assert b"other" in lease.s3.get_object(Bucket=lease.bucket, Key=lease.key)["Body"].read()


def test_only_s3_gets_a_writer_lease():
    with pytest.raises(LeaseError, match="S3"):
        with single_writer(Location.of("gs://bucket/index")):
            pass
