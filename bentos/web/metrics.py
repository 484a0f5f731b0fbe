"""The services' own Prometheus metrics, and reading the text format."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

# The services' own metrics. Under `bentoml serve` prometheus_client runs in multiprocess mode:
# every process's metrics reach /metrics through BentoML's collector, summed over processes, so
# appending this registry's text there too would declare each family twice.
SERVICE_METRICS = CollectorRegistry(auto_describe=True)
REFUSED = Counter("ragserve_requests_refused", "Requests refused for capacity, by reason.", ["reason"], registry=SERVICE_METRICS)


def samples(text: str) -> Iterator[Sample]:
    """Every sample of a Prometheus text exposition."""
    for family in text_string_to_metric_families(text):
        yield from family.samples


def only_engine_metrics(text: str) -> str:
    """vLLM's metric families (``vllm:*``); its process/GC ones would clash with BentoML's."""
    keep = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") and line.count(" ") >= 2 else line
        if name.startswith("vllm:"):
            keep.append(line)
    return "\n".join(keep) + ("\n" if keep else "")
