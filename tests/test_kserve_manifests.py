"""The KServe manifests: every overlay renders with `kubectl kustomize`, each InferenceService and
ServingRuntime validates against KServe's real CRD schemas (unknown fields refused), and our rules hold."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from infra.manifests import (
    OVERLAYS,
    load_crd_schemas,
    render,
    rule_errors,
    schema_errors,
)

SCHEMAS = Path(__file__).resolve().parents[1].parent / "shared" / "schemas" / "kserve"

pytestmark = pytest.mark.skipif(not SCHEMAS.is_dir(), reason=f"KServe CRD schemas not found at {SCHEMAS} (../shared is absent)")


@pytest.fixture(scope="module")
def schemas():
    return load_crd_schemas(SCHEMAS)


@pytest.fixture(scope="module")
def rendered():
    return {overlay: render(overlay) for overlay in OVERLAYS}


def by_kind(docs: list[dict], kind: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(rendered, schemas, overlay):
    docs = rendered[overlay]
    assert sorted(d["kind"] for d in docs) == ["InferenceService", "ServingRuntime"]
    for doc in docs:
        assert schema_errors(doc, schemas) == []
    assert rule_errors(docs) == []


def test_overlays_are_a_release_pair_and_a_canary(rendered):
    """blue is the live release; green is a new revision at 0% for the gates; canary starts at 10%."""
    predictors = {o: by_kind(rendered[o], "InferenceService")["spec"]["predictor"] for o in OVERLAYS}
    assert "canaryTrafficPercent" not in predictors["blue"]
    assert predictors["green"]["canaryTrafficPercent"] == 0
    assert predictors["canary"]["canaryTrafficPercent"] == 10
    assert predictors["blue"]["model"]["image"] != predictors["green"]["model"]["image"] == predictors["canary"]["model"]["image"]
    for o in OVERLAYS:  # one InferenceService whose revisions are blue and green
        isvc = by_kind(rendered[o], "InferenceService")
        assert isvc["metadata"]["name"] == "ragserve"
        assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
        assert predictors[o]["minReplicas"] == 0


def env_of(docs: list[dict]) -> dict:
    return {e["name"]: e.get("value") for e in by_kind(docs, "ServingRuntime")["spec"]["containers"][0]["env"]}


def test_the_guarded_overlay_adds_a_guard_engine_with_weights_from_the_same_storage(rendered):
    env, blue = env_of(rendered["guarded"]), env_of(rendered["blue"])
    assert "RAGSERVE_GUARD_MODEL" not in blue and blue["RAGSERVE_MODEL"] == "/mnt/models"
    assert (env["RAGSERVE_MODEL"], env["RAGSERVE_GUARD_MODEL"]) == ("/mnt/models/model", "/mnt/models/guard")
    assert float(env["RAGSERVE_GUARD_GPU_MEMORY_UTILIZATION"]) < 0.5
    isvc = by_kind(rendered["guarded"], "InferenceService")
    assert (
        isvc["spec"]["predictor"]["model"]["image"] == by_kind(rendered["blue"], "InferenceService")["spec"]["predictor"]["model"]["image"]
    )
    # The rule catches a guard model fetched from elsewhere, or sharing the model's folder.
    docs = copy.deepcopy(rendered["guarded"])
    container = by_kind(docs, "ServingRuntime")["spec"]["containers"][0]
    for e in container["env"]:
        if e["name"] == "RAGSERVE_GUARD_MODEL":
            e["value"] = "meta-llama/Llama-Guard-3-1B"
    assert any("RAGSERVE_GUARD_MODEL 'meta-llama/Llama-Guard-3-1B' must be a folder under /mnt/models" in e for e in rule_errors(docs))


def test_strict_schema_catches_what_kubernetes_would_silently_drop(rendered, schemas):
    isvc = copy.deepcopy(by_kind(rendered["green"], "InferenceService"))
    isvc["spec"]["predictor"]["minReplica"] = 0  # a typo Kubernetes would prune
    isvc["spec"]["predictor"]["maxReplicas"] = "two"
    errors = schema_errors(isvc, schemas)
    assert any("minReplica" in e for e in errors) and any("maxReplicas" in e for e in errors), errors
    runtime = copy.deepcopy(by_kind(rendered["green"], "ServingRuntime"))
    runtime["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = {"bad": 1}
    assert schema_errors(runtime, schemas)


def test_rules_catch_a_bad_deployment(rendered):
    docs = copy.deepcopy(rendered["canary"])
    isvc, runtime = by_kind(docs, "InferenceService"), by_kind(docs, "ServingRuntime")
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    isvc["spec"]["predictor"]["minReplicas"] = 1
    container = runtime["spec"]["containers"][0]
    del container["resources"]["limits"]["nvidia.com/gpu"]
    del container["startupProbe"]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] != "/dev/shm"]
    text = "\n".join(rule_errors(docs))
    for expected in (
        "canaryTrafficPercent only works in Serverless",
        "minReplicas must be 0",
        "no nvidia.com/gpu",
        "startup probes must use /readyz",
        "startup budget",
        "/dev/shm",
    ):
        assert expected in text, text
