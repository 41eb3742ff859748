"""Tiny randomly initialised causal LMs of several architectures, built by the suite (nothing is downloaded).

They share the bundled SmolLM2 tokenizer (its vocabulary fits every config below), so only the architecture
differs: Llama (SmolLM2's own), Qwen2 (biases on q/k/v), Mistral (sliding-window attention) and Gemma (GeGLU,
scaled embeddings, tied head). Variants drop the chat template or the pad token, as real checkpoints do.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from training.engine.base_model import TINY_ARCHITECTURE

# The bundled tiny twin's sizes; a shorter context keeps the position tables small.
SIZES = {**TINY_ARCHITECTURE, "max_position_embeddings": 512}
ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma")


def build_tiny_model_folder(
    folder: Path,
    architecture: str,
    *,
    chat_template: bool = True,
    pad_token: bool = True,
    seed: int = 0,
    max_shard_size: str | None = None,
) -> Path:
    """Save a tiny random `architecture` model with the bundled tokenizer as a Hugging Face folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = copy.deepcopy(_bundled_tokenizer())
    config = AutoConfig.for_model(
        architecture,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if pad_token else None,
        tie_word_embeddings=architecture in ("llama", "gemma"),
        **SIZES,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    if max_shard_size:
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    if not chat_template:
        tokenizer.chat_template = None
    if not pad_token:
        tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    if not chat_template:
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        _edit_json(folder / "tokenizer_config.json", lambda values: values.pop("chat_template", None))
    if not pad_token:
        _edit_json(folder / "tokenizer_config.json", lambda values: values.pop("pad_token", None))
        _edit_json(folder / "special_tokens_map.json", lambda values: values.pop("pad_token", None))
    return folder


@functools.cache
def _bundled_tokenizer():
    # Reading the tokenizer out of the GGUF file takes seconds; the builders copy this one.
    from training.engine.base_model import load_bundled_tokenizer

    return load_bundled_tokenizer()


def _edit_json(path: Path, edit) -> None:
    if path.is_file():
        values = json.loads(path.read_text())
        edit(values)
        path.write_text(json.dumps(values, indent=2))
