"""Where the index lives: a local folder (or a Modal Volume mount), or an object store URI.

LanceDB opens both. An object store takes credentials and endpoint from the standard
environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL,
and the GCS and Azure ones), and anything else from RAGSERVE_DB_STORAGE_OPTIONS (LanceDB's
storage options, e.g. {"allow_http": "true"}).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse


class IndexStoreError(RuntimeError):
    """The index cannot do what was asked; the message says what to do instead."""


# LanceDB's schemes for object stores (s3+ddb: S3 with DynamoDB commits).
OBJECT_STORE_SCHEMES = ("s3", "s3+ddb", "gs", "az", "abfs")


@dataclass(frozen=True)
class Location:
    uri: str
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, db: str | Path | Location, options: dict[str, str] | None = None) -> Location:
        if isinstance(db, Location):
            return db
        db = str(db)
        scheme = urlparse(db).scheme
        if "://" in db and scheme not in OBJECT_STORE_SCHEMES and scheme != "file":
            raise ValueError(f"RAGSERVE_DB {db!r}: use a folder or one of {', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)}")
        return cls(db.removeprefix("file://"), dict(options or {}))

    @property
    def remote(self) -> bool:
        return "://" in self.uri

    @property
    def path(self) -> Path:
        """The folder (local locations only)."""
        if self.remote:
            raise ValueError(f"{self.uri} is not a local folder")
        return Path(self.uri)

    def connect(self, create: bool = True):
        """LanceDB on this location; a writer (``create``) makes a missing local folder first."""
        import lancedb

        if not self.remote:
            if create:
                self.path.mkdir(parents=True, exist_ok=True)
            return lancedb.connect(self.uri)
        return lancedb.connect(self.uri, storage_options=self.options or None)

    def s3_client_args(self) -> dict:
        """boto3's client arguments for the same store: LanceDB's endpoint and region options if
        given, else the environment (boto3 reads AWS_ENDPOINT_URL and AWS_REGION itself)."""
        opts = {k.lower().removeprefix("aws_"): v for k, v in self.options.items()}
        args = {}
        if endpoint := opts.get("endpoint") or opts.get("endpoint_url"):
            args["endpoint_url"] = endpoint
        if region := opts.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
            args["region_name"] = region
        for key in ("access_key_id", "secret_access_key", "session_token"):
            if key in opts:
                args[f"aws_{key}"] = opts[key]
        return args

    def __str__(self) -> str:
        return self.uri
