"""The Bento, the pins and the CLI: what a user runs before anything is served."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_bento_pins_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = set(project["dependencies"]) | set(project["optional-dependencies"]["cuda"])
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert set(bento["python"]["packages"]) == expected


def test_bentoml_build(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True"}
    r = subprocess.run([str(BIN / "bentoml"), "build", ".", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    tag = r.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("ragserve:"), r.stdout
    bento_dir = tmp_path / "bentos" / "ragserve" / tag.split(":", 1)[1]
    assert (bento_dir / "src" / "bentos" / "gateway.py").is_file()
    assert not (bento_dir / "src" / "tests").exists()


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
            cwd=ROOT, env={**env, **extra_env}, capture_output=True, text=True, timeout=120,
        )
        assert r.returncode != 0, (extra_args, extra_env)
        assert "set RAGSERVE_API_KEY" in r.stdout + r.stderr
