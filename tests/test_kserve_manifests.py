"""The KServe manifests: every overlay renders with `kubectl kustomize`, each InferenceService and
ServingRuntime validates against KServe's real CRD schemas (unknown fields refused), and our rules hold."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.manifests import (
    OVERLAYS,
    REINDEX,
    core_schemas,
    load_crd_schemas,
    render,
    rule_errors,
    schema_errors,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT.parent / "shared" / "schemas" / "kserve"


@pytest.fixture(scope="module")
def schemas():
    if not SCHEMAS.is_dir():
        pytest.skip(f"KServe CRD schemas not found at {SCHEMAS} (../shared is absent)")
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
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == (["ConfigMap"] if overlay == "object-store" else []) + ["InferenceService", "ServingRuntime"]
    for doc in docs:
        assert schema_errors(doc, schemas | core_schemas()) == []
    assert rule_errors(docs) == []


def test_overlays_are_a_release_pair_and_a_canary(rendered):
    """blue is the live release; green is a new revision at 0% for the gates; canary starts at 10%."""
    predictors = {o: by_kind(rendered[o], "InferenceService")["spec"]["predictor"] for o in OVERLAYS}
    assert "canaryTrafficPercent" not in predictors["blue"]
    assert predictors["green"]["canaryTrafficPercent"] == 0
    assert predictors["canary"]["canaryTrafficPercent"] == 10
    assert predictors["blue"]["model"]["image"] != predictors["green"]["model"]["image"] == predictors["canary"]["model"]["image"]
    for o in ("blue", "green", "canary", "guarded"):  # one InferenceService whose revisions are blue and green
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


def example_values(kustomization: dict) -> dict[str, str]:
    """What a user sets in overlays/example/kustomization.yaml: image, storageUri, served model name."""
    [image] = kustomization["images"]
    isvc_patch, runtime_patch = (yaml.safe_load(p["patch"]) for p in kustomization["patches"])
    [name] = [op["value"] for op in runtime_patch if op["op"] == "replace"]
    return {
        "image": f"{image['newName']}:{image['newTag']}",
        "storageUri": isvc_patch["spec"]["predictor"]["model"]["storageUri"],
        "RAGSERVE_SERVED_MODEL_NAME": name,
    }


def example_rendered_values(docs: list[dict]) -> dict[str, str]:
    model = by_kind(docs, "InferenceService")["spec"]["predictor"]["model"]
    return {
        "image": model["image"],
        "storageUri": model["storageUri"],
        "RAGSERVE_SERVED_MODEL_NAME": env_of(docs)["RAGSERVE_SERVED_MODEL_NAME"],
    }


def test_the_example_overlay_sets_image_model_and_storage_uri_from_one_file(rendered, schemas, tmp_path):
    """docs/kserve.md: a user edits overlays/example/kustomization.yaml only. What it sets lands
    in the render, which still validates; edited in a copy, the new values land there too."""
    folder = ROOT / "infra" / "kserve" / "overlays" / "example"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert example_values(kustomization) == example_rendered_values(rendered["example"])
    assert example_rendered_values(rendered["example"]) != example_rendered_values(rendered["blue"])
    [container] = by_kind(rendered["example"], "ServingRuntime")["spec"]["containers"]
    assert container["image"] == example_values(kustomization)["image"]  # `images:` sets the runtime's too

    mine = tmp_path / "mine"  # the user's copy, outside the repository
    shutil.copytree(folder, mine)
    base = os.path.relpath(folder.parent.parent / "base", mine)  # kustomize takes relative paths only
    text = (mine / "kustomization.yaml").read_text().replace("../../base", base)
    for old, new in (
        ("registry.example.com/ragserve", "ghcr.io/acme/ragserve"),
        ('"1.0.0"', '"2.3.4"'),
        ("hf://HuggingFaceTB/SmolLM2-1.7B-Instruct", "s3://acme-models/qwen"),
        ("smollm2-1.7b", "qwen"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    (mine / "kustomization.yaml").write_text(text)
    docs = render(str(mine))  # an absolute path: rendered where it is
    expected = {"image": "ghcr.io/acme/ragserve:2.3.4", "storageUri": "s3://acme-models/qwen", "RAGSERVE_SERVED_MODEL_NAME": "qwen"}
    assert example_values(yaml.safe_load(text)) == example_rendered_values(docs) == expected
    for doc in docs:
        assert schema_errors(doc, schemas) == []
    assert rule_errors(docs) == []


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
    del isvc["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"]
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
        "enable-prometheus-scraping",
    ):
        assert expected in text, text


@pytest.fixture(scope="module")
def router_docs():
    return {d["kind"]: d for d in render("router", under=".")}


def test_the_router_in_front_renders_and_validates(router_docs):
    """infra/kserve/router: Kubernetes' own kinds, checked against the API's models with unknown
    fields refused; the strict schema catches what the API server would prune or refuse."""
    core = core_schemas()
    assert sorted(router_docs) == ["Deployment", "Service"]
    for doc in router_docs.values():
        assert schema_errors(doc, core) == []
    bad = copy.deepcopy(router_docs["Deployment"])
    bad["spec"]["replica"] = 1
    bad["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = 1024
    errors = "\n".join(schema_errors(bad, core))
    assert "'replica' was unexpected" in errors and "1024 is not of type 'string'" in errors


def test_the_router_sends_live_to_the_inferenceservice_and_shadows_the_latest_revision(router_docs):
    deployment, service = router_docs["Deployment"], router_docs["Service"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    # Live through KServe's own split; the shadow slot is the latest revision's tag route.
    assert env["RAGSERVE_ROUTER_BLUE"]["value"] == "http://ragserve-predictor.$(POD_NAMESPACE).svc.cluster.local"
    assert env["RAGSERVE_ROUTER_GREEN"]["value"] == "http://latest-ragserve-predictor.$(POD_NAMESPACE).svc.cluster.local"
    names = list(env)  # Kubernetes expands $(POD_NAMESPACE) only from variables defined before
    assert names.index("POD_NAMESPACE") < names.index("RAGSERVE_ROUTER_BLUE")
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "secretKeyRef" in env["RAGSERVE_ROUTER_ADMIN_KEY"]["valueFrom"] and env["RAGSERVE_ROUTER_HOST"]["value"] == "0.0.0.0"
    assert deployment["spec"]["replicas"] == 1  # the shadow setting and its pairs live in one process
    assert service["spec"]["ports"][0]["targetPort"] == int(env["RAGSERVE_ROUTER_PORT"]["value"]) == 3000
    # The command exists in the release image: infra/ is in the Bento and `python -m infra` is the router.
    assert container["command"] == ["python", "-m", "infra"]
    assert "infra/*.py" in yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]
    r = subprocess.run([sys.executable, "-m", "infra", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "RAGSERVE_ROUTER_ADMIN_KEY" in r.stdout, r.stderr


def test_the_prometheus_job_keeps_what_the_promotion_queries():
    """The shipped scrape job maps pod labels to series labels (the revision) and keeps the
    namespace; test_promotion.py runs it in a real Prometheus."""
    [job] = yaml.safe_load((ROOT / "infra" / "kserve" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    rules = job["relabel_configs"]
    assert {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"} in rules
    assert any(r.get("target_label") == "namespace" for r in rules)
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]


@pytest.fixture(scope="module")
def reindex_docs():
    return {variant: {d["kind"] + "/" + d["metadata"]["name"]: d for d in render(variant, under="reindex")} for variant in REINDEX}


def cronjob_container(docs: dict) -> dict:
    [container] = docs["CronJob/ragserve-reindex"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("variant", REINDEX)
def test_reindex_cronjob_renders_and_validates(reindex_docs, variant):
    """Kubernetes' own kinds checked against the API's models; one writer at a time; the command
    is `ragserve index` as the release image has it."""
    docs, core = reindex_docs[variant], core_schemas()
    for doc in docs.values():
        assert schema_errors(doc, core) == []
    cron = docs["CronJob/ragserve-reindex"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert cronjob_container(docs)["command"][:4] == ["python", "-m", "bentos.retrieval", "/docs"]
    bad = copy.deepcopy(cron)
    bad["spec"]["concurrency_policy"] = "Forbid"  # a typo the API server would drop
    assert any("'concurrency_policy' was unexpected" in e for e in schema_errors(bad, core))


def test_the_reindex_image_command_exists():
    r = subprocess.run([sys.executable, "-m", "bentos.retrieval", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Index PATH" in r.stdout, r.stderr


def test_the_object_store_job_writes_where_the_replicas_read(reindex_docs, rendered):
    """The CronJob and the InferenceService take RAGSERVE_DB and the credentials from the same
    ConfigMap and Secret; the replicas no longer mount the index volume."""
    job = cronjob_container(reindex_docs["object-store"])
    runtime = by_kind(rendered["object-store"], "ServingRuntime")["spec"]
    [serving] = runtime["containers"]
    assert (
        job["envFrom"]
        == serving["envFrom"]
        == [{"configMapRef": {"name": "ragserve-index"}}, {"secretRef": {"name": "ragserve-object-store"}}]
    )
    assert "RAGSERVE_DB" not in {e["name"] for e in serving["env"]} | {e["name"] for e in job["env"]}
    assert by_kind(rendered["object-store"], "ConfigMap") == reindex_docs["object-store"]["ConfigMap/ragserve-index"]
    assert by_kind(rendered["object-store"], "ConfigMap")["data"]["RAGSERVE_DB"].startswith("s3://")
    assert "index" not in {v["name"] for v in runtime["volumes"]} | {m["name"] for m in serving["volumeMounts"]}


def test_the_pvc_job_writes_the_volume_the_replicas_mount_read_only(reindex_docs, rendered):
    docs = reindex_docs["pvc"]
    job = cronjob_container(docs)
    pod = docs["CronJob/ragserve-reindex"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    runtime = by_kind(rendered["blue"], "ServingRuntime")["spec"]
    [serving] = runtime["containers"]
    job_env = {e["name"]: e.get("value") for e in job["env"]}
    assert job_env["RAGSERVE_DB"] == env_of(rendered["blue"])["RAGSERVE_DB"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    served = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in runtime["volumes"] if "persistentVolumeClaim" in v}
    assert claims["index"] == served["index"] == "ragserve-index"
    mounts = {m["name"]: m for m in job["volumeMounts"]}
    assert not mounts["index"].get("readOnly") and {m["name"]: m for m in serving["volumeMounts"]}["index"]["readOnly"]
    assert mounts["index"]["mountPath"] == {m["name"]: m for m in serving["volumeMounts"]}["index"]["mountPath"]
    assert docs["PersistentVolumeClaim/ragserve-index"]["spec"]["accessModes"] == ["ReadWriteMany"]
