"""A KServe revision's step figures from a Prometheus server's HTTP API, as Flagger reads them.

A revision may run on several pods and each scrape of its tag URL lands on one of them, so the
gateway's own /metrics cannot give a step's figures there. Prometheus scrapes every pod (the
manifests annotate them; infra/kserve/prometheus/scrape-config.yaml is a job that honours the
annotations), and ``increase()`` over the step's window, summed over the revision's pods, gives
requests, errors and the felt-latency histograms per revision, counter resets included.
"""

from __future__ import annotations

import math
import time

import httpx

from .gates import GATEWAY_HISTOGRAMS, GATEWAY_PACE_COUNTERS, SlotCounts

# Prometheus's kubernetes-pods job maps pod labels to metric labels ("labelmap"), so Knative's
# serving.knative.dev/revision arrives as this one.
REVISION_LABEL = "serving_knative_dev_revision"
CHAT = 'service_name="ragserve-gateway",endpoint=~"/v1/chat.*"'
# SlotCounts field -> the gateway's histogram (and the extra matchers it needs).
HISTOGRAMS = {
    "buckets": ("bentoml_service_request_duration_seconds", CHAT + ',http_response_code!~"5.."'),
    **{field: (metric, "") for field, metric in GATEWAY_HISTOGRAMS.items()},
}


class PrometheusError(Exception):
    pass


class Prometheus:
    def __init__(self, url: str, namespace: str, revision_label: str = REVISION_LABEL, timeout_s: float = 10):
        self.url, self.namespace, self.label, self.timeout_s = url.rstrip("/"), namespace, revision_label, timeout_s

    def query(self, promql: str, at: float) -> list[dict]:
        """An instant query's vector: [{"metric": {labels}, "value": [ts, "number"]}, ...]."""
        try:
            r = httpx.get(self.url + "/api/v1/query", params={"query": promql, "time": f"{at:.3f}"}, timeout=self.timeout_s)
            body = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise PrometheusError(f"cannot query Prometheus at {self.url} ({type(e).__name__}): check --prometheus-url") from None
        if r.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused `{promql}`: {r.status_code} {body.get('error', r.text[:300])}")
        return body["data"]["result"]

    def selector(self, revision: str, extra: str = "") -> str:
        matchers = [f'{self.label}="{revision}"', f'namespace="{self.namespace}"', extra]
        return "{" + ",".join(m for m in matchers if m) + "}"

    def counts_since(self, revision: str, since: float) -> SlotCounts:
        """What the revision's pods served from ``since`` (a Unix time) until now."""
        now = time.time()
        window = f"[{max(1, math.ceil(now - since))}s]"
        c = SlotCounts()
        attempts = f"sum by (http_response_code) (increase(bentoml_service_request_total{self.selector(revision, CHAT)}{window}))"
        for row in self.query(attempts, now):
            n = float(row["value"][1])
            if row["metric"].get("http_response_code", "").startswith("5"):
                c.errors += n
            else:
                c.ok += n
        for field, (metric, extra) in HISTOGRAMS.items():
            for row in self.query(f"sum by (le) (increase({metric}_bucket{self.selector(revision, extra)}{window}))", now):
                getattr(c, field)[float(row["metric"]["le"])] = float(row["value"][1])
        for field, metric in GATEWAY_PACE_COUNTERS.items():
            for row in self.query(f"sum(increase({metric}{self.selector(revision)}{window}))", now):
                setattr(c, field, float(row["value"][1]))
        return c
