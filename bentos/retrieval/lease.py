"""One writer at a time per index: an ``flock`` on a local folder, a lease object on S3.

On object storage nothing like ``flock`` exists, and LanceDB's own commit checks guard one
commit, not a whole re-index (diff, delete, add, optimize, publish). The lease is one object
beside the tables, ``.ragserve-writer.lease``, written with S3's conditional puts: created with
``If-None-Match: *`` (exactly one writer can create it), renewed and released with ``If-Match`` on
the ETag the writer last wrote (a writer that lost it cannot overwrite the next one's). A writer
that dies stops renewing; once its lease is past its expiry, the next writer replaces it (again
with ``If-Match``, so two writers racing for an expired lease cannot both win). AWS S3, MinIO, R2
and moto honour these headers; a store that ignores them would let two writers in.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from bentos.retrieval.storage import IndexStoreError, Location

log = logging.getLogger(__name__)

LEASE = ".ragserve-writer.lease"
LOCK = ".ragserve-writer.lock"


class LeaseError(IndexStoreError):
    """Another writer holds the index, or this writer lost it; the message says what to do."""


@contextmanager
def single_writer(location: Location, ttl_s: float = 60.0) -> Iterator[S3Lease | None]:
    """Held for a whole re-index or rollback; a second writer is refused at once."""
    if not location.remote:
        with folder_lock(location) as held:
            yield held
        return
    if urlparse(location.uri).scheme not in ("s3", "s3+ddb"):
        raise LeaseError(f"writing {location.uri} needs a single-writer lease, which ragserve keeps on S3 (and S3-compatible stores) only")
    lease = S3Lease(location, ttl_s)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()


@contextmanager
def folder_lock(location: Location) -> Iterator[None]:
    path = location.path
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise LeaseError(f"another re-index holds {path} (pid {f.read().strip() or '?'}); wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield None


class S3Lease:
    def __init__(self, location: Location, ttl_s: float):
        import boto3

        parsed = urlparse(location.uri)
        self.uri, self.bucket = location.uri, parsed.netloc
        self.key = "/".join(p for p in (parsed.path.strip("/"), LEASE) if p)
        self.s3 = boto3.client("s3", **location.s3_client_args())
        self.ttl_s = ttl_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.ttl_s}).encode()

    def _put(self, **condition) -> str | None:
        """The lease written under ``condition``; None when the condition did not hold."""
        from botocore.exceptions import ClientError

        try:
            return self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), **condition)["ETag"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                return None
            raise

    def acquire(self) -> None:
        from botocore.exceptions import ClientError

        self.etag = self._put(IfNoneMatch="*")
        if self.etag is None:
            try:
                held = self.s3.get_object(Bucket=self.bucket, Key=self.key)
                holder = json.loads(held["Body"].read())
            except (ClientError, ValueError):  # released, or unreadable, in between: try once more
                holder, held = {"expires": 0, "owner": "?"}, {"ETag": None}
            if holder.get("expires", 0) > time.time():
                left = holder["expires"] - time.time()
                raise LeaseError(
                    f"another re-index holds {self.uri} ({holder.get('owner')}, lease renewed for {left:.0f} s more); wait for it to finish"
                )
            log.warning("taking over %s: the writer lease of %s expired (a writer that died)", self.uri, holder.get("owner"))
            self.etag = self._put(IfMatch=held["ETag"]) if held["ETag"] else self._put(IfNoneMatch="*")
            if self.etag is None:
                raise LeaseError(f"another re-index took {self.uri} at the same moment; wait for it to finish")
        self._renewer = threading.Thread(target=self._renew, name="index-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                etag = self._put(IfMatch=self.etag)
            except Exception as e:  # the store unreachable: keep trying until the lease would lapse
                log.warning("could not renew the writer lease on %s: %s", self.uri, e)
                continue
            if etag is None:
                self.lost = f"the writer lease on {self.uri} was taken over (this writer stalled longer than its {self.ttl_s:g} s lease)"
                log.error(self.lost)
                return
            self.etag = etag

    def check(self) -> None:
        """Raise before publishing if the lease is no longer this writer's."""
        if self.lost:
            raise LeaseError(self.lost + "; nothing was published, run the re-index again")

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._renewer:
            self._renewer.join(5)
        if self.lost or self.etag is None:
            return
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as e:
            log.warning("could not release the writer lease on %s (%s); it expires in %g s", self.uri, e, self.ttl_s)
