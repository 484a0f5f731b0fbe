"""`python -m bentos.retrieval PATH`: `ragserve index` in the release image (infra/kserve/reindex)."""

from bentos.retrieval.command import index

index(prog_name="python -m bentos.retrieval")
