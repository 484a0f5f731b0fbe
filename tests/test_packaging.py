"""The Bento, the pins and the CLI: what a user runs before anything is served."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from bentos.settings import OFFLINE_ENV, TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_bento_pins_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = set(project["dependencies"]) | set(project["optional-dependencies"]["cuda"])
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert set(bento["python"]["packages"]) == expected


def locked(name: str) -> set[str]:
    """The pins of a lock file, local versions dropped (the CPU torch is 2.13.0+cpu)."""
    lines = (ROOT / name).read_text().splitlines()
    return {line.split("+")[0].lower() for line in lines if line and not line.startswith((" ", "#"))}


def test_the_lock_files_hold_pyprojects_pins():
    """`make setup` installs a lock file: it must be what pyproject.toml asks for (`make lock`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    common = {re.sub(r"\[.*\]", "", p).lower() for p in project["dependencies"] + extras["dev"] + extras["deploy"]}  # moto[s3] is moto
    assert common | set(extras["cpu"]) <= locked("requirements-cpu.lock")
    assert common | set(extras["cuda"]) <= locked("requirements-cuda.lock")
    assert not {"torchvision", "torchaudio", "triton"} & {p.split("==")[0] for p in locked("requirements-cpu.lock")}


def test_the_offline_environment_is_the_same_everywhere():
    """One list in code (bentos.settings); the files that cannot import it say the same. The image
    and KServe runtime leave the hub to the deployment (the runtime has its weights mounted)."""
    make = dict(re.findall(r"^export (\w+) \??:?= (\S+)$", (ROOT / "Makefile").read_text(), re.M))
    assert make == OFFLINE_ENV
    bento = {e["name"]: e["value"] for e in yaml.safe_load((ROOT / "bentofile.yaml").read_text())["envs"]}
    assert bento == TELEMETRY_OFF
    runtime = yaml.safe_load((ROOT / "infra" / "kserve" / "base" / "servingruntime.yaml").read_text())
    env = {e["name"]: e.get("value") for e in runtime["spec"]["containers"][0]["env"]}
    assert env.items() >= OFFLINE_ENV.items()


def test_bentoml_build(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True"}
    r = subprocess.run(
        [str(BIN / "bentoml"), "build", ".", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    tag = r.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("ragserve:"), r.stdout
    bento_dir = tmp_path / "bentos" / "ragserve" / tag.split(":", 1)[1]
    assert (bento_dir / "src" / "bentos" / "gateway.py").is_file()
    assert (bento_dir / "src" / "infra" / "__main__.py").is_file()  # the router KServe runs from the same image
    assert not (bento_dir / "src" / "tests").exists() and not (bento_dir / "src" / "bentos" / "tools").exists()


def test_the_services_never_import_the_tooling():
    """bentos/tools (CLI, benchmarks, launchers) is left out of the Bento: nothing served may need it."""
    code = "import sys, bentos.gateway; print(sorted(m for m in sys.modules if m.startswith(('bentos.tools', 'infra', 'modal_apps'))))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_cli_help_and_model_prepare():
    r = subprocess.run([str(BIN / "ragserve"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "model" in r.stdout and "bench" in r.stdout
    r = subprocess.run([str(BIN / "ragserve"), "model", "prepare"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    folder = Path(r.stdout.strip().splitlines()[-1])
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def test_cli_bad_setting_names_the_variable():
    env = {**os.environ, "RAGSERVE_MAX_MODEL_LEN": "lots"}
    r = subprocess.run([str(BIN / "ragserve"), "model", "prepare"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "max_model_len" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_model_folder_is_a_clear_error(tmp_path):
    env = {**os.environ, "RAGSERVE_MODEL": str(tmp_path / "nope")}
    r = subprocess.run([str(BIN / "ragserve"), "model", "prepare"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "is not a folder" in r.stderr and "Traceback" not in r.stderr


def test_serve_refuses_open_bind_without_key():
    env = {k: v for k, v in os.environ.items() if k != "RAGSERVE_API_KEY"}
    for extra_args, extra_env in ((["--host", "0.0.0.0"], {}), ([], {"BENTOML_HOST": "0.0.0.0"}), ([], {"RAGSERVE_HOST": "0.0.0.0"})):
        r = subprocess.run(
            [str(BIN / "bentoml"), "serve", ".", "--port", "3999", *extra_args],
            cwd=ROOT,
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode != 0, (extra_args, extra_env)
        assert "set RAGSERVE_API_KEY" in r.stdout + r.stderr
