"""Checks for the KServe manifests: the CRDs' own schemas, made strict, plus the rules a
serving deployment of this stack must follow.

Kubernetes prunes fields a CRD schema does not know instead of refusing them, so a misspelt
``minReplica`` would vanish silently on `kubectl apply`. Validating with unknown fields refused
catches that here.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import yaml
from jsonschema import Draft7Validator

from .backends import default_kubectl

KSERVE_DIR = Path(__file__).parent / "kserve"
OVERLAYS = ("blue", "green", "canary", "guarded", "object-store", "example")
REINDEX = ("object-store", "pvc")  # infra/kserve/reindex/<variant>
MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts storageUri
PORT = 3000
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD files are large: libyaml when present


def render(overlay: str, under: str = "overlays") -> list[dict]:
    """`kubectl kustomize infra/kserve/<under>/<overlay>` as a list of objects."""
    kubectl = shutil.which(default_kubectl())
    if kubectl is None:
        raise FileNotFoundError("kubectl is not installed; it renders the overlays (`kubectl kustomize`): run `make setup`")
    out = subprocess.run([kubectl, "kustomize", str(KSERVE_DIR / under / overlay)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.load_all(out, Loader=LOADER) if d]


def strict(schema: dict) -> dict:
    """The schema with unknown properties refused wherever it lists properties and does not say
    unknown fields are kept (``x-kubernetes-preserve-unknown-fields``)."""
    schema = copy.deepcopy(schema)

    def walk(node: dict) -> None:
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key, []):
                walk(child)

    walk(schema)  # metadata is a bare "object" in CRDs: the API server checks it, not the CRD
    return schema


def load_crd_schemas(folder: Path) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict openAPIV3Schema, from the CRD files in ``folder``."""
    schemas = {}
    for path in sorted(folder.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=LOADER)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


# Kubernetes' own kinds the manifests use, and the client model that describes each.
CORE_KINDS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("batch/v1", "CronJob"): "V1CronJob",
}
PRIMITIVES = {
    "str": "string",
    "bytes": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "datetime": "string",
    "date": "string",
}


def core_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict JSON schema for Kubernetes' own kinds, from the `kubernetes`
    client's models (generated from the API's OpenAPI spec: every field's JSON name and type).
    Unknown fields are refused, as for the CRDs; quantities are strings there, so quote them."""
    from kubernetes.client import models

    definitions: dict[str, dict] = {}

    def of(t: str) -> dict:
        kind = t[:5].lower()  # list[X] / dict[str, X], or List[...] / Dict[...] in newer clients
        if kind == "list[":
            return {"type": "array", "items": of(t[5:-1])}
        if kind in ("dict[", "dict("):
            return {"type": "object", "additionalProperties": of(t[5:-1].split(", ", 1)[1])}
        if t == "object":  # int-or-string and free-form fields
            return {}
        if t in PRIMITIVES:
            return {"type": PRIMITIVES[t]}
        if t not in definitions:
            definitions[t] = {}  # placeholder first: models may refer to themselves
            cls = getattr(models, t)
            definitions[t] = {
                "type": "object",
                "additionalProperties": False,
                "properties": {cls.attribute_map[name]: of(kind) for name, kind in cls.openapi_types.items()},
            }
        return {"$ref": f"#/definitions/{t}"}

    roots = {key: of(model) for key, model in CORE_KINDS.items()}
    return {key: {**root, "definitions": definitions} for key, root in roots.items()}


def schema_errors(doc: dict, schemas: dict[tuple[str, str], dict]) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in schemas:
        return [f"no schema for {key[1]} {key[0]}"]
    name = doc.get("metadata", {}).get("name")
    return [
        f"{key[1]}/{name}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in Draft7Validator(schemas[key]).iter_errors(doc)
    ]


def _probe_path(container: dict, probe: str) -> str | None:
    return ((container.get(probe) or {}).get("httpGet") or {}).get("path")


def guard_model_errors(where: str, env: dict[str, str | None]) -> list[str]:
    """A guard model's weights come through the same storage path as the model's (one
    storageUri, two folders), and its engine gets a GPU share of its own."""
    guard = env.get("RAGSERVE_GUARD_MODEL")
    if guard is None:
        return []
    errors = []
    model = env.get("RAGSERVE_MODEL") or ""
    for name, path in (("RAGSERVE_MODEL", model), ("RAGSERVE_GUARD_MODEL", guard)):
        if not path.startswith(MODEL_MOUNT + "/"):
            errors.append(f"{where}: {name} {path!r} must be a folder under {MODEL_MOUNT}, where storageUri lands")
    if model == guard:
        errors.append(f"{where}: RAGSERVE_MODEL and RAGSERVE_GUARD_MODEL are the same folder")
    if "RAGSERVE_GUARD_GPU_MEMORY_UTILIZATION" not in env:
        errors.append(f"{where}: set RAGSERVE_GUARD_GPU_MEMORY_UTILIZATION, the guard engine's share of the GPU")
    return errors


def rule_errors(docs: list[dict]) -> list[str]:
    """What the CRDs cannot say: GPU requested, probes with a startup budget, /dev/shm, metrics,
    scale to zero, canary only in Serverless mode, and the runtime each service names exists."""
    errors: list[str] = []
    runtimes = {d["metadata"]["name"]: d for d in docs if d.get("kind") in ("ServingRuntime", "ClusterServingRuntime")}
    for name, rt in runtimes.items():
        spec = rt["spec"]
        annotations = spec.get("annotations", {})
        if annotations.get("prometheus.kserve.io/port") != str(PORT) or annotations.get("prometheus.kserve.io/path") != "/metrics":
            errors.append(f"ServingRuntime/{name}: Prometheus annotations must point at :{PORT}/metrics")
        shm_volumes = {v["name"] for v in spec.get("volumes", []) if (v.get("emptyDir") or {}).get("medium") == "Memory"}
        for c in spec.get("containers", []):
            where = f"ServingRuntime/{name} container {c.get('name')}"
            if "nvidia.com/gpu" not in (c.get("resources") or {}).get("limits", {}):
                errors.append(f"{where}: no nvidia.com/gpu limit")
            if PORT not in [p.get("containerPort") for p in c.get("ports", [])]:
                errors.append(f"{where}: does not expose port {PORT}")
            if _probe_path(c, "readinessProbe") != "/readyz" or _probe_path(c, "startupProbe") != "/readyz":
                errors.append(f"{where}: readiness and startup probes must use /readyz")
            if _probe_path(c, "livenessProbe") != "/livez":
                errors.append(f"{where}: liveness probe must use /livez")
            startup = c.get("startupProbe") or {}
            if startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < 600:
                errors.append(f"{where}: startup budget under 10 minutes; model load and compile need more")
            if not any(m.get("mountPath") == "/dev/shm" and m.get("name") in shm_volumes for m in c.get("volumeMounts", [])):
                errors.append(f"{where}: no memory-backed /dev/shm")
            errors += guard_model_errors(where, {e["name"]: e.get("value") for e in c.get("env", []) if "name" in e})
    for d in docs:
        if d.get("kind") != "InferenceService":
            continue
        name, annotations = d["metadata"]["name"], d["metadata"].get("annotations", {})
        predictor = d["spec"]["predictor"]
        mode = annotations.get("serving.kserve.io/deploymentMode", "Serverless")
        if annotations.get("serving.kserve.io/enable-prometheus-scraping") != "true":
            errors.append(
                f'InferenceService/{name}: set serving.kserve.io/enable-prometheus-scraping: "true" (the promotion\'s step figures)'
            )
        if predictor.get("minReplicas") != 0:
            errors.append(f"InferenceService/{name}: minReplicas must be 0 (scale to zero)")
        if mode != "Serverless":
            errors.append(f"InferenceService/{name}: scale to zero needs Serverless mode, not {mode}")
        if "canaryTrafficPercent" in predictor and mode != "Serverless":
            errors.append(f"InferenceService/{name}: canaryTrafficPercent only works in Serverless mode")
        if not predictor.get("scaleMetric") or not predictor.get("scaleTarget"):
            errors.append(f"InferenceService/{name}: set scaleMetric and scaleTarget (the autoscaling target)")
        runtime = (predictor.get("model") or {}).get("runtime")
        if runtime not in runtimes:
            errors.append(f"InferenceService/{name}: runtime {runtime!r} is not in the rendered manifests")
        deadline = annotations.get("serving.knative.dev/progress-deadline", "600s")
        for rt in [runtimes[runtime]] if runtime in runtimes else []:
            for c in rt["spec"].get("containers", []):
                startup = c.get("startupProbe") or {}
                budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
                if deadline.endswith("s") and int(deadline[:-1]) < budget:
                    errors.append(f"InferenceService/{name}: progress-deadline {deadline} is shorter than the startup budget {budget}s")
    return errors
