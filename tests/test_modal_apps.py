"""The Modal apps with no Modal account and no network: specs through Modal's public API,
the re-index job and the serving class run with `.local()`, bad settings and deployments whose
settings were not chosen (no env file, the demo model on a GPU, a shell-only setting) refused at build."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from conftest import CORPUS

ROOT = Path(__file__).resolve().parents[1]
# The demo model on purpose: no hub, no GPU here. Deployments name a real model (modal_apps/deploy.env.example).
DEMO = {"RAGSERVE_MODAL_ALLOW_DEMO": "true"}


def env_file(folder: Path, settings: dict[str, str]) -> Path:
    path = folder / "deploy.env"
    path.write_text("".join(f"{k}='{v}'\n" for k, v in settings.items()))
    return path


@pytest.fixture(scope="module", autouse=True)
def deployment(tmp_path_factory):
    """The apps are built (imported) with an env file that deploys the demo model on purpose."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAGSERVE_MODAL_ENV_FILE", str(env_file(tmp_path_factory.mktemp("deploy"), DEMO)))
        yield


@pytest.fixture(scope="module")
def apps():
    import modal_apps.reindex as reindex
    import modal_apps.serve as serve

    return serve, reindex


def server_info(serve):
    # A class's settings live on its service function; `info()` works on it before deployment.
    return serve.Server._get_class_service_function().info()


def test_serving_class_asks_for_a_gpu_scales_to_zero_and_serves_the_web_api(apps):
    serve, _ = apps
    from bentos.settings import EngineSettings

    info = server_info(serve)
    assert info.gpus == [("L40S", 1)]
    assert info.method_details and "api" in info.method_details  # the @modal.web_server endpoint
    assert info.concurrency_info.max_inputs == EngineSettings().max_num_seqs  # matched to the engine batch
    assert set(info.volumes) == {"/models", "/cache", "/index"}
    assert info.volumes["/index"].name == "ragserve-index"
    assert any("ragserve-api-key" in s for s in info.secrets)
    assert info.startup_timeout == 1200 and info.timeout == 600
    # Modal's info() does not report scaling: these are the options the class was decorated with.
    opts = serve.SERVE_OPTIONS
    assert opts["min_containers"] == 0
    assert 2 <= opts["scaledown_window"] <= 3600
    assert opts["max_containers"] >= 1
    assert opts["enable_memory_snapshot"] is False


def test_router_app_is_a_cpu_web_endpoint_reading_weights_from_a_dict():
    """The stable endpoint for blue-green releases on Modal (tests/test_promotion.py drives it)."""
    import modal_apps.router as router

    info = router.router.info()
    assert info.gpus == [] and info.web_info is not None
    assert info.concurrency_info.max_inputs == 1000
    assert router.ROUTER_OPTIONS["min_containers"] == 0
    assert router.app.name == "ragserve-router"
    assert "ragserve-traffic" in repr(router.traffic)


def test_reindex_job_runs_on_a_cron_schedule_on_cpu_as_the_single_writer(apps):
    _, reindex = apps
    info = reindex.reindex.info()
    assert info.schedule == "Cron('0 */6 * * *', UTC)"
    assert info.gpus == []
    assert set(info.volumes) == {"/index", "/docs"}
    assert reindex.REINDEX_OPTIONS["max_containers"] == 1
    # Same Volume name on both apps: the job writes what the servers read.
    assert info.volumes["/index"].name == server_info(apps[0]).volumes["/index"].name


def test_download_function_fills_the_weights_volume(apps):
    serve, _ = apps
    info = serve.download.info()
    assert set(info.volumes) == {"/models"} and info.gpus == []
    # The embedded model is already prepared on this machine: `.local()` finds it, unchanged.
    folder = Path(serve.download.local())
    assert (folder / "config.json").is_file()


def test_images_install_exactly_the_pins_of_pyproject():
    from modal_apps import resources

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = project["dependencies"]
    assert resources.gpu_packages() == base + project["optional-dependencies"]["cuda"]
    assert resources.cpu_packages() == base
    assert not any(p.startswith("vllm") for p in resources.cpu_packages())


def test_serving_environment():
    from bentos.settings import ModalSettings
    from modal_apps import resources

    chosen = {"RAGSERVE_API_KEY": "never-baked-into-the-image", "RAGSERVE_MAX_NUM_SEQS": "32", "RAGSERVE_MODAL_ENV_FILE": "deploy.env"}
    env = resources.serving_env(ModalSettings(gpu="H100:2"), chosen)
    assert "RAGSERVE_API_KEY" not in env and "RAGSERVE_MODAL_ENV_FILE" not in env  # the key comes from the modal.Secret only
    assert env["RAGSERVE_MAX_NUM_SEQS"] == "32" and env["RAGSERVE_TENSOR_PARALLEL_SIZE"] == "2"
    assert env["HF_HUB_OFFLINE"] == "1" and env["RAGSERVE_DB"] == "/index/lancedb"
    assert "RAGSERVE_ENFORCE_EAGER" not in env
    assert resources.serving_env(ModalSettings(fast_boot=True, startup_timeout=300), {})["RAGSERVE_ENFORCE_EAGER"] == "true"
    snap = resources.serving_env(ModalSettings(memory_snapshot=True), {})
    assert "--enable-sleep-mode" in snap["RAGSERVE_ENGINE_ARGS"] and snap["VLLM_SERVER_DEV_MODE"] == "1"


def test_a_model_missing_from_the_weights_volume_names_the_download_command(apps):
    serve, _ = apps
    from bentos.settings import Settings

    with pytest.raises(RuntimeError, match=r"modal run modal_apps/serve.py::download"):
        serve.model_env(Settings(model="Qwen/Qwen2.5-7B-Instruct"))
    assert serve.model_env(Settings()) == {}  # the embedded model is prepared by the model service


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"gpu": "H1000"}, "unknown Modal GPU 'H1000'"),
        ({"gpu": "A10:8"}, "must be 1-4 for A10"),
        ({"reindex_gpu": "TPU"}, "unknown Modal GPU"),
        ({"reindex_schedule": "0 3 * *"}, "has 4 fields"),
        ({"reindex_schedule": "61 * * * *"}, "minute '61'"),
        ({"reindex_schedule": "0 3 * * FUNDAY"}, "day of week 'FUNDAY'"),
        ({"reindex_schedule": "*/0 * * * *"}, "step"),
        ({"reindex_schedule": "0 17-9 * * *"}, "runs backwards"),
        ({"scaledown_window": 1}, "out of Modal's range 2-3600"),
        ({"scaledown_window": 7200}, "out of Modal's range 2-3600"),
        ({"startup_timeout": 120}, "shorter than the expected cold start (240 s"),
        ({"startup_timeout": 30, "fast_boot": True}, "shorter than the expected cold start (60 s"),
        ({"min_containers": 3, "max_containers": 2}, "below min_containers"),
    ],
)
def test_bad_modal_settings_are_refused_with_the_fix(setting, message):
    from bentos.settings import ModalSettings

    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("*", r"\*")):
        ModalSettings(**setting)


@pytest.mark.parametrize("cron", ["0 3 * * *", "*/15 9-17 * * MON-FRI", "0 0 1 JAN,JUL *", "5,35 */2 * * 0-6"])
def test_good_cron_expressions_pass(cron):
    from bentos.settings import ModalSettings

    assert ModalSettings(reindex_schedule=cron).reindex_schedule == cron


def build_apps(code: str = "import modal_apps.serve, modal_apps.reindex", shell: dict | None = None, **settings: str):
    """Build the apps as `modal deploy` does, with ``settings`` in the env file (and the demo
    model on purpose) and ``shell`` exported in the deploying shell."""
    folder = Path(tempfile.mkdtemp(prefix="ragserve-deploy-"))
    chosen = {"RAGSERVE_MODAL_ENV_FILE": str(env_file(folder, {**DEMO, **settings}))}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **chosen, **(shell or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_app_refuses_to_build_on_a_bad_setting():
    r = build_apps(RAGSERVE_MODAL_GPU="H1000")
    assert r.returncode != 0
    assert "bad RAGSERVE_* setting for the Modal app" in r.stderr and "unknown Modal GPU 'H1000'" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_guard_model_runs_in_the_serving_container_from_the_weights_volume(apps):
    """Its engine is a third service of the same Bento in the same container: its weights come
    from the Volume like the model's, its GPU share is forwarded with the other settings."""
    serve, _ = apps
    from bentos.settings import ModalSettings, Settings
    from modal_apps import resources

    chosen = {"RAGSERVE_GUARD_MODEL": "meta-llama/Llama-Guard-3-1B", "RAGSERVE_GUARD_GPU_MEMORY_UTILIZATION": "0.2"}
    env = resources.serving_env(ModalSettings(), chosen)
    assert env["RAGSERVE_GUARD_MODEL"] == "meta-llama/Llama-Guard-3-1B" and env["RAGSERVE_GUARD_GPU_MEMORY_UTILIZATION"] == "0.2"
    with pytest.raises(RuntimeError, match=r"Llama-Guard-3-1B is not in .*\(same RAGSERVE_GUARD_MODEL\)"):
        serve.model_env(Settings(guard_model="meta-llama/Llama-Guard-3-1B"))
    assert serve.model_env(Settings(guard_model="embedded")) == {}  # prepared by the guard service itself
    shared = Settings(device="cuda", guard_model="meta-llama/Llama-Guard-3-1B", guard_gpu_memory_utilization=0.2)
    assert shared.engine.gpu_memory_utilization == 0.7  # the model's default share makes room
    with pytest.raises(ValidationError, match="lower RAGSERVE_GPU_MEMORY_UTILIZATION"):
        Settings(device="cuda", guard_model="meta-llama/Llama-Guard-3-1B", gpu_memory_utilization=0.9, guard_gpu_memory_utilization=0.2)


def test_a_guard_model_with_memory_snapshots_is_refused_at_build():
    r = build_apps(RAGSERVE_MODAL_MEMORY_SNAPSHOT="true", RAGSERVE_GUARD_MODEL="meta-llama/Llama-Guard-3-1B")
    assert r.returncode != 0 and "does not support a guard engine yet" in r.stderr and "Traceback" not in r.stderr


def test_reindex_local_publishes_into_a_folder_and_a_failed_run_keeps_it(apps, tmp_path, monkeypatch):
    _, reindex = apps
    from bentos.retrieval.documents import read_documents
    from bentos.retrieval.index import IndexReader, IndexStore, IndexStoreError

    db = tmp_path / "lancedb"
    monkeypatch.setenv("RAGSERVE_DB", str(db))
    first = reindex.reindex.local(str(CORPUS))
    assert first["db"] == str(db) and first["docs_added"] == len(read_documents(CORPUS)[0])
    assert IndexStore(db).published_version() == first["version"]
    table, version = IndexReader(db).snapshot()
    assert version == first["version"] and table.count_rows() == first["chunks_total"] > 0

    again = reindex.reindex.local(str(CORPUS))
    assert again["version"] == first["version"] and again["docs_unchanged"] == first["docs_added"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IndexStoreError, match="the published index is unchanged"):
        reindex.reindex.local(str(empty))
    assert IndexStore(db).published_version() == first["version"]

    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "new.md").write_text("# Parking\n\nVisitors park in the north lot.")
    second = reindex.reindex.local(str(tmp_path / "more"))
    assert second["version"] > first["version"]
    back = reindex.reindex.local(rollback=True)
    assert back["version"] == first["version"] == IndexStore(db).published_version()


@pytest.mark.stack
def test_serving_class_runs_the_stack_locally_with_fast_boot(unguarded_stack):
    """`.local()` runs the class's enter hooks and web method as a container would: the same
    `bentoml serve .` as `make serve`, here with the fast-boot switch (--enforce-eager). The
    session's second stack is this container (tests/modal_container.py)."""
    import openai

    assert "--enforce-eager" in unguarded_stack.log_path.read_text()
    client = openai.OpenAI(base_url=f"{unguarded_stack.url}/v1", api_key=unguarded_stack.api_key, max_retries=0, timeout=120)
    r = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "How many days do I have to ask for a refund?"}], max_tokens=24
    )
    assert r.choices[0].message.content
    assert r.model_extra["citations"], "the answer should come with the retrieved sources"
    assert httpx.get(f"{unguarded_stack.url}/readyz", timeout=10).status_code == 200


SPECS = """
import json, modal_apps.reindex as r, modal_apps.serve as s
print(json.dumps({
    "serve_volumes": sorted(s.SERVE_OPTIONS["volumes"]), "serve_db": s.SERVE_OPTIONS["env"]["RAGSERVE_DB"],
    "reindex_volumes": sorted(r.REINDEX_OPTIONS["volumes"]), "reindex_db": r.REINDEX_OPTIONS["env"]["RAGSERVE_DB"],
    "secrets": len(r.REINDEX_OPTIONS["secrets"]), "shards": r.EMBED_OPTIONS["max_containers"],
    "embed_gpu": r.embed_shard.info().gpus,
}))
"""


def test_an_index_in_a_bucket_needs_no_volume_on_any_container():
    """With RAGSERVE_MODAL_INDEX_URI the serving and re-index containers read and write the bucket
    (credentials from RAGSERVE_MODAL_INDEX_SECRET): no index Volume, nothing to reload."""
    import json

    env = dict(
        RAGSERVE_MODAL_INDEX_URI="s3://corp-index/ragserve", RAGSERVE_MODAL_INDEX_SECRET="index-s3", RAGSERVE_MODAL_REINDEX_SHARDS="8"
    )
    r = build_apps(SPECS, **env)
    assert r.returncode == 0, r.stderr
    specs = json.loads(r.stdout.strip().splitlines()[-1])
    assert "/index" not in specs["serve_volumes"] and specs["reindex_volumes"] == ["/docs"]
    assert specs["serve_db"] == specs["reindex_db"] == "s3://corp-index/ragserve" and specs["secrets"] == 1
    assert specs["shards"] == 8 and specs["embed_gpu"] == []  # on CPU unless RAGSERVE_MODAL_REINDEX_GPU is set
    bad = build_apps(RAGSERVE_MODAL_INDEX_URI="/index/lancedb")
    assert bad.returncode != 0 and "is a folder" in bad.stderr and "Traceback" not in bad.stderr


def test_reindex_fans_the_embedding_out_over_shards_and_commits_once(apps, tmp_path, monkeypatch):
    """The shard function run with `.local()` per shard (Modal's `.map` over containers when
    deployed): the writer publishes once, and the vectors equal those the writer embeds alone."""
    import numpy as np

    from bentos.retrieval.index import IndexReader

    _, reindex = apps
    monkeypatch.setattr(reindex.cfg, "reindex_shards", 3)
    monkeypatch.setattr(reindex.cfg, "reindex_shard_size", 2)  # the test corpus's chunks in shards of two
    monkeypatch.setenv("RAGSERVE_DB", str(tmp_path / "sharded"))
    fanned = reindex.reindex.local(str(CORPUS))
    assert fanned["shards"] >= 3 and fanned["shards"] * 2 >= fanned["chunks_added"] > 0
    monkeypatch.setattr(reindex.cfg, "reindex_shards", 1)
    monkeypatch.setenv("RAGSERVE_DB", str(tmp_path / "alone"))
    alone = reindex.reindex.local(str(CORPUS))
    assert alone["shards"] == 0 and alone["chunks_total"] == fanned["chunks_total"]

    def vectors(db: Path) -> np.ndarray:
        rows = sorted(IndexReader(db).current().to_arrow().select(["chunk_id", "vector"]).to_pylist(), key=lambda r: r["chunk_id"])
        return np.array([r["vector"] for r in rows])

    assert np.allclose(vectors(tmp_path / "sharded"), vectors(tmp_path / "alone"), atol=1e-5)


def test_a_deploy_needs_its_settings_chosen_in_an_env_file(tmp_path, monkeypatch):
    """No file, or a setting exported in the shell that the file lacks (or says otherwise), or the
    embedded demo model on a GPU without saying so: each refused with the fix. A file that names
    a model is deployed as written, and a shell that agrees with it is fine."""
    from bentos.settings import DeployChoiceError, deployment_settings

    monkeypatch.setenv("RAGSERVE_MODAL_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(DeployChoiceError, match=r"copy modal_apps/deploy.env.example to modal_apps/deploy.env"):
        deployment_settings(gpu_endpoint=True)

    chosen = {"RAGSERVE_MODEL": "Qwen/Qwen2.5-7B-Instruct", "RAGSERVE_MODAL_GPU": "H100", "RAGSERVE_MAX_NUM_SEQS": "32"}
    monkeypatch.setenv("RAGSERVE_MODAL_ENV_FILE", str(env_file(tmp_path, chosen)))
    settings, env = deployment_settings(gpu_endpoint=True)
    assert env == chosen and settings.engine.model == "Qwen/Qwen2.5-7B-Instruct" and settings.engine.max_num_seqs == 32
    assert settings.modal.gpu == "H100"

    monkeypatch.setenv("RAGSERVE_MAX_NUM_SEQS", "32")  # the same as the file: what `set -a; . deploy.env` gives
    monkeypatch.setenv("RAGSERVE_TEST_NOT_A_SETTING", "x")
    assert deployment_settings(gpu_endpoint=True)[1] == chosen
    monkeypatch.setenv("RAGSERVE_MAX_NUM_SEQS", "8")
    monkeypatch.setenv("RAGSERVE_GUARD_MODEL", "meta-llama/Llama-Guard-3-1B")
    shell_only = r"RAGSERVE_GUARD_MODEL, RAGSERVE_MAX_NUM_SEQS set in this shell but not .*put them in the file"
    with pytest.raises(DeployChoiceError, match=shell_only):
        deployment_settings(gpu_endpoint=True)
    monkeypatch.delenv("RAGSERVE_MAX_NUM_SEQS")
    monkeypatch.delenv("RAGSERVE_GUARD_MODEL")

    demo = env_file(tmp_path, {"RAGSERVE_MODAL_GPU": "L4"})
    fix = r"embedded 135M demo model on a L4 GPU: set RAGSERVE_MODEL=<hf id> in .*RAGSERVE_MODAL_ALLOW_DEMO=true"
    with pytest.raises(DeployChoiceError, match=fix):
        deployment_settings(gpu_endpoint=True)
    assert deployment_settings(gpu_endpoint=False)[0].engine.model == "embedded"  # the CPU re-index job serves no model
    demo.write_text(demo.read_text() + "RAGSERVE_MODAL_ALLOW_DEMO=true\n")
    assert deployment_settings(gpu_endpoint=True)[0].modal.allow_demo

    env_file(tmp_path, {"RAGSERVE_MODEL": "Qwen/Qwen2.5-7B-Instruct", "HF_TOKEN": "hf_x"})
    with pytest.raises(DeployChoiceError, match="only RAGSERVE_\\* settings belong there"):
        deployment_settings(gpu_endpoint=True)


def test_a_fresh_shell_does_not_deploy_the_demo_model_on_a_gpu():
    """`modal deploy modal_apps/serve.py` from a checkout with no env file, then with the example's
    settings: the first stops naming the file to create, the second builds with the file's model."""
    r = build_apps("import modal_apps.serve", shell={"RAGSERVE_MODAL_ENV_FILE": str(ROOT / "no-such-deploy.env")})
    assert r.returncode != 0 and "not deploying: no deployment settings at" in r.stderr and "Traceback" not in r.stderr
    r = build_apps("import modal_apps.serve", RAGSERVE_MODAL_ALLOW_DEMO="false")
    assert r.returncode != 0 and "RAGSERVE_MODAL_ALLOW_DEMO=true to deploy the demo model on purpose" in r.stderr
    example = ROOT / "modal_apps" / "deploy.env.example"
    code = "import modal_apps.serve as s; print(s.SERVE_OPTIONS['env']['RAGSERVE_MODEL'], s.SERVE_OPTIONS['gpu'])"
    r = build_apps(code, shell={"RAGSERVE_MODAL_ENV_FILE": str(example)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2:] == ["Qwen/Qwen2.5-7B-Instruct", "L40S"]
