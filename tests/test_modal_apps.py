"""The Modal apps with no Modal account and no network: specs through Modal's public API,
the re-index job and the serving class run with `.local()`, bad settings refused at build."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from conftest import CORPUS

ROOT = Path(__file__).resolve().parents[1]


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
    from bentos.settings import Settings

    info = server_info(serve)
    assert info.gpus == [("L40S", 1)]
    assert info.method_details and "api" in info.method_details  # the @modal.web_server endpoint
    assert info.concurrency_info.max_inputs == Settings().max_num_seqs  # matched to the engine batch
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


def test_serving_environment(monkeypatch):
    from modal_apps import resources
    from modal_apps.config import ModalSettings

    monkeypatch.setenv("RAGSERVE_API_KEY", "never-baked-into-the-image")
    monkeypatch.setenv("RAGSERVE_MAX_NUM_SEQS", "32")
    env = resources.serving_env(ModalSettings(gpu="H100:2"))
    assert "RAGSERVE_API_KEY" not in env  # it comes from the modal.Secret only
    assert env["RAGSERVE_MAX_NUM_SEQS"] == "32" and env["RAGSERVE_TENSOR_PARALLEL_SIZE"] == "2"
    assert env["HF_HUB_OFFLINE"] == "1" and env["RAGSERVE_DB"] == "/index/lancedb"
    assert "RAGSERVE_ENFORCE_EAGER" not in env
    assert resources.serving_env(ModalSettings(fast_boot=True, startup_timeout=300))["RAGSERVE_ENFORCE_EAGER"] == "true"
    snap = resources.serving_env(ModalSettings(memory_snapshot=True))
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
    from modal_apps.config import ModalSettings

    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("*", r"\*")):
        ModalSettings(**setting)


@pytest.mark.parametrize("cron", ["0 3 * * *", "*/15 9-17 * * MON-FRI", "0 0 1 JAN,JUL *", "5,35 */2 * * 0-6"])
def test_good_cron_expressions_pass(cron):
    from modal_apps.config import ModalSettings

    assert ModalSettings(reindex_schedule=cron).reindex_schedule == cron


def build_apps(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import modal_apps.serve, modal_apps.reindex"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_app_refuses_to_build_on_a_bad_setting():
    r = build_apps(RAGSERVE_MODAL_GPU="H1000")
    assert r.returncode != 0
    assert "bad RAGSERVE_* setting for the Modal app" in r.stderr and "unknown Modal GPU 'H1000'" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_guard_model_runs_in_the_serving_container_from_the_weights_volume(apps, monkeypatch):
    """Its engine is a third service of the same Bento in the same container: its weights come
    from the Volume like the model's, its GPU share is forwarded with the other settings."""
    serve, _ = apps
    from bentos.settings import Settings
    from modal_apps import resources
    from modal_apps.config import ModalSettings

    monkeypatch.setenv("RAGSERVE_GUARD_MODEL", "meta-llama/Llama-Guard-3-1B")
    monkeypatch.setenv("RAGSERVE_GUARD_GPU_MEMORY_UTILIZATION", "0.2")
    env = resources.serving_env(ModalSettings())
    assert env["RAGSERVE_GUARD_MODEL"] == "meta-llama/Llama-Guard-3-1B" and env["RAGSERVE_GUARD_GPU_MEMORY_UTILIZATION"] == "0.2"
    with pytest.raises(RuntimeError, match=r"Llama-Guard-3-1B is not in .*\(same RAGSERVE_GUARD_MODEL\)"):
        serve.model_env(Settings(guard_model="meta-llama/Llama-Guard-3-1B"))
    assert serve.model_env(Settings(guard_model="embedded")) == {}  # prepared by the guard service itself
    shared = Settings(device="cuda", guard_model="meta-llama/Llama-Guard-3-1B", guard_gpu_memory_utilization=0.2)
    assert shared.gpu_memory_utilization == 0.7  # the model's default share makes room
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
    r = subprocess.run([sys.executable, "-c", SPECS], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
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
