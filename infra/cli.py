"""`ragserve router` and `ragserve promote`: the release commands, added to `ragserve` through the
`ragserve.commands` entry points in pyproject.toml."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from bentos.settings import ReleaseSettings, WebSettings, is_loopback

DEFAULT_EVAL = Path(__file__).parent / "eval" / "promotion.jsonl"


def release(name: str):
    """An option's default from the release settings (RAGSERVE_ROUTER_*, RAGSERVE_PROMETHEUS_URL)."""
    return lambda: getattr(ReleaseSettings(), name)


@click.command()
@click.option("--blue", required=True, default=release("router_blue"), help="Base URL of the live stack, e.g. http://127.0.0.1:3001.")
@click.option("--green", default=release("router_green"), help="Base URL of the candidate stack (it gets no traffic until promoted).")
@click.option("--host", default=release("router_host"), show_default="127.0.0.1, RAGSERVE_ROUTER_HOST")
@click.option("--port", default=release("router_port"), show_default="3000, RAGSERVE_ROUTER_PORT", type=click.IntRange(1, 65535))
@click.option(
    "--state",
    type=click.Path(dir_okay=False, path_type=Path),
    default=release("router_state"),
    help="File that keeps the routing table across restarts; when it exists it wins over --blue/--green.",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=release("router_timeout_s"),
    show_default="300, RAGSERVE_ROUTER_TIMEOUT_S",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds an upstream may take.",
)
@click.option(
    "--max-body-bytes",
    default=release("router_max_body_bytes"),
    show_default="8 MiB, RAGSERVE_ROUTER_MAX_BODY_BYTES",
    type=click.IntRange(min=1),
    help="Largest request body relayed; a larger one gets 413.",
)
@click.option(
    "--shadow-concurrency", default=4, show_default=True, type=click.IntRange(min=1), help="Copies to a shadow slot in flight at once."
)
@click.option(
    "--shadow-queue",
    default=16,
    show_default=True,
    type=click.IntRange(min=0),
    help="Copies that may wait for one; beyond them a copy is dropped and counted.",
)
@click.option("--shadow-keep-text", is_flag=True, help="Keep both answers' text in the shadow pairs too (default: figures only, no text).")
def router(
    blue: str,
    green: str | None,
    host: str,
    port: int,
    state: Path | None,
    timeout_s: float,
    max_body_bytes: int,
    shadow_concurrency: int,
    shadow_queue: int,
    shadow_keep_text: bool,
) -> None:
    """A weighted blue-green router in front of two gateway stacks: the stable endpoint clients use.

    All traffic goes to blue until `ragserve promote local` moves it. A candidate that fails or
    answers 5xx is retried on the live slot before the client sees anything. GET/PUT /-/traffic
    reads and sets the weights and the shadow slot (PUT needs RAGSERVE_ROUTER_ADMIN_KEY when set):
    {"shadow": {"slot": "green", "percent": 20}} copies a fifth of live chat requests there, and
    GET /-/shadow?since=N gives the compared pairs. /metrics has per-slot attempts, errors, time to
    first text, pace and latency.
    """
    import uvicorn

    from bentos.web.logs import setup_service_logging

    from .router import create_router_app
    from .traffic import MemoryStore, Traffic

    admin_key = ReleaseSettings().admin_key
    if admin_key is None and not is_loopback(host):
        raise click.UsageError(f"refusing to expose the routing table on {host!r} without RAGSERVE_ROUTER_ADMIN_KEY")
    try:
        initial = Traffic(upstreams={"blue": blue, **({"green": green} if green else {})}, weights={"blue": 100, "green": 0})
        store = MemoryStore(initial, state)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    setup_service_logging(name="infra")
    click.echo(f"routing {store.get().weights} on http://{host}:{port}", err=True)
    app = create_router_app(
        store,
        admin_key,
        timeout_s,
        max_body_bytes=max_body_bytes,
        shadow_concurrency=shadow_concurrency,
        shadow_queue=shadow_queue,
        shadow_keep_text=shadow_keep_text,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def policy_options(f):
    """The promotion policy: every threshold has a default and an option."""
    from .promote import Policy

    fields = Policy.model_fields
    options = [
        click.option(
            "--eval",
            "eval_set",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=DEFAULT_EVAL,
            show_default=True,
            help="Frozen eval set (JSONL): guardrail cases {prompt, label} and retrieval cases {query, source} "
            "for the index the stacks serve.",
        ),
        click.option("--api-key", default=lambda: WebSettings().api_key_value, help="The stacks' API key (default RAGSERVE_API_KEY)."),
        click.option("--steps", default="10,50,100", show_default=True, help=fields["steps"].description),
        click.option("--grounding/--no-grounding", default=True, show_default=True, help=fields["grounding"].description),
    ]
    for name in (
        "step_s",
        "min_step_requests",
        "max_error_rate",
        "max_latency_ratio",
        "max_ttft_ratio",
        "min_tps_ratio",
        "min_block_rate",
        "max_false_positive",
        "min_retrieval_hit",
        "min_faithfulness",
        "max_faithfulness_drop",
        "max_citation_precision_drop",
        "ready_timeout_s",
        "shadow_s",
        "shadow_percent",
        "min_shadow_pairs",
        "min_refusal_agreement",
        "min_answer_similarity",
        "min_citation_overlap",
    ):
        flag = "--" + name.replace("_s", "_seconds").replace("_", "-") if name.endswith("_s") else "--" + name.replace("_", "-")
        options.append(
            click.option(
                flag, name, default=fields[name].default, show_default=True, type=type(fields[name].default), help=fields[name].description
            )
        )
    for option in reversed(options):
        f = option(f)
    return f


def run_promotion(backend, kw: dict, candidate: str | None = None, candidate_url: str | None = None) -> None:
    """Read the eval set and policy, run the procedure, exit 0 on promotion and 1 on rollback."""
    from pydantic import ValidationError

    from .backends import BackendError
    from .gates import GateError, read_eval_set
    from .promote import Policy, Promotion

    eval_set, api_key, steps = kw.pop("eval_set"), kw.pop("api_key"), kw.pop("steps")
    try:
        policy = Policy(steps=[int(p) for p in steps.split(",")], **kw)
        cases = read_eval_set(eval_set)
    except ValueError as e:  # ValidationError is one
        raise click.UsageError(str(e) if not isinstance(e, ValidationError) else f"bad policy: {e}") from None
    except GateError as e:
        raise click.UsageError(str(e)) from None
    try:
        outcome = Promotion(backend, cases, policy, api_key).run(candidate, candidate_url)
    except BackendError as e:
        raise click.ClickException(str(e)) from None
    if outcome.promoted:
        click.echo(f"promoted: {outcome.candidate} now serves 100%", err=True)
    else:
        click.echo(
            f"rolled back: {outcome.failed.gate} failed ({outcome.failed.reason}); {outcome.live} serves 100% "
            f"({outcome.rollback_s * 1000:.0f} ms after the failed check)",
            err=True,
        )
    sys.exit(outcome.exit_code)


def roll_back_now(backend) -> None:
    from .backends import BackendError

    try:
        t = backend.traffic()
        live = t.live
        if t.weights[live] < 100:
            t = backend.shift(t.other(live), 0)
    except BackendError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{live} serves 100%: {t.weights}")


@click.group()
def promote() -> None:
    """Move traffic to a candidate release only when it proves healthy; roll back when it does not.

    The same procedure on every backend: wait for the candidate's /readyz; gate it alone (smoke
    chat, the frozen eval set for guardrails and retrieval, TTFT and tokens/s against the live
    release in the same run); shift traffic in --steps while watching its error rate and P99; then
    promote. Any failed check puts all traffic back on the live release at once. Each decision is
    a JSON line on stdout; the exit code is 0 when promoted and 1 when rolled back.
    """


@promote.command("local")
@click.option("--router", "router_url", default="http://127.0.0.1:3000", show_default=True, help="The `ragserve router` to drive.")
@click.option("--candidate-url", help="Put this stack in the candidate slot first (weight 0).")
@click.option("--rollback", is_flag=True, help="Only put all traffic back on the live slot, now.")
@policy_options
def promote_local(router_url: str, candidate_url: str | None, rollback: bool, **kw) -> None:
    """Promote the router's candidate slot (the one without traffic) over the live one."""
    from .backends import local_backend

    backend = local_backend(router_url, ReleaseSettings().admin_key)
    if rollback:
        return roll_back_now(backend)
    run_promotion(backend, kw, candidate_url=candidate_url)


@promote.command("modal")
@click.option("--router-url", required=True, help="The deployed Modal router's URL (modal_apps/router.py), for its metrics.")
@click.option("--dict", "dict_name", default="ragserve-traffic", show_default=True, help="The modal.Dict that holds the routing table.")
@click.option("--live-url", help="Create the routing table with this deployment as live (first promotion only).")
@click.option("--candidate-url", help="The candidate deployment's URL (its own app name, e.g. RAGSERVE_MODAL_APP_NAME=ragserve-green).")
@click.option("--rollback", is_flag=True, help="Only put all traffic back on the live slot, now.")
@policy_options
def promote_modal(router_url: str, dict_name: str, live_url: str | None, candidate_url: str | None, rollback: bool, **kw) -> None:
    """Promote a candidate Modal deployment behind the Modal router by changing its weights."""
    import modal

    from .backends import modal_backend
    from .traffic import DictStore, Traffic

    d = modal.Dict.from_name(dict_name, create_if_missing=True)
    if live_url:
        DictStore(d).set(Traffic(upstreams={"blue": live_url}, weights={"blue": 100, "green": 0}))
    backend = modal_backend(d, router_url)
    if rollback:
        return roll_back_now(backend)
    run_promotion(backend, kw, candidate_url=candidate_url)


@promote.command("kserve")
@click.option("--name", default="ragserve", show_default=True, help="The InferenceService.")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "--kubectl",
    help="kubectl binary (its current context is the cluster)  [default: the one installed with ragserve, else kubectl on PATH]",
)
@click.option("--dry-run", is_flag=True, help="Print the kubectl commands the promotion would run, and run none.")
@click.option("--rollback", is_flag=True, help="Only patch canaryTrafficPercent to 0 (all traffic to the previous revision), now.")
@click.option(
    "--prometheus-url",
    default=release("prometheus_url"),
    help="Prometheus server that scrapes the revisions' pods (see infra/kserve/prometheus/): each step's requests, errors, "
    "time to first text and pace per revision, summed over its pods. Without it they are read from each tag URL's /metrics, "
    "one pod per read: right only while each revision runs on one pod. Keep --step-seconds at two scrape intervals or more.",
)
@click.option(
    "--revision-label",
    default="serving_knative_dev_revision",
    show_default=True,
    help="The label carrying the Knative revision name on the scraped series (what the scrape job's labelmap gives it).",
)
@click.option(
    "--router-url",
    help="The `ragserve router` in front of the InferenceService (infra/kserve/router; admin key from "
    "RAGSERVE_ROUTER_ADMIN_KEY), for --shadow-seconds: it copies live requests to the latest revision and compares the answers.",
)
@policy_options
def promote_kserve(
    name: str,
    namespace: str,
    kubectl: str | None,
    dry_run: bool,
    rollback: bool,
    prometheus_url: str | None,
    revision_label: str,
    router_url: str | None,
    **kw,
) -> None:
    """Promote the latest revision of an InferenceService (applied with the green overlay at
    canaryTrafficPercent 0) by patching canaryTrafficPercent step by step."""
    from .backends import KServeBackend, default_kubectl, local_backend
    from .prometheus import Prometheus

    prometheus = Prometheus(prometheus_url, namespace, revision_label) if prometheus_url else None
    router = local_backend(router_url, ReleaseSettings().admin_key) if router_url else None
    echo = functools.partial(click.echo, err=True)
    backend = KServeBackend(name, namespace, kubectl or default_kubectl(), echo=echo, prometheus=prometheus, router=router)
    if dry_run:
        steps = [int(p) for p in kw["steps"].split(",")]
        for line in backend.plan(steps):
            click.echo(line)
        return
    if rollback:
        return roll_back_now(backend)
    run_promotion(backend, kw, candidate="green")
