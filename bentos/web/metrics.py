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


def only_engine_metrics(*texts: str) -> str:
    """vLLM's metric families (``vllm:*``) of one or more engines, each family once with all the
    engines' samples (their ``model_name`` label tells them apart): the text format allows a
    family's HELP and TYPE once, with its samples together. vLLM's process/GC families would
    clash with BentoML's and are left out."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for text in texts:
        family = None
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                family = parts[2] if len(parts) > 2 else None
                if family and family.startswith("vllm:") and line not in families.setdefault(family, ([], []))[0]:
                    families[family][0].append(line)
            elif family and family.startswith("vllm:") and line.strip():
                families[family][1].append(line)
    lines = [line for header, samples in families.values() for line in header + samples]
    return "\n".join(lines) + ("\n" if lines else "")
