"""Bring your own base model: check a Hugging Face model folder and copy it into the registry's layout.

Any causal LM that transformers can build is accepted, from a local folder or a hub id (found in the host's Hugging
Face cache, else downloaded where the host reaches the hub: safetensors, configs and tokenizer files only).
Everything is checked before anything is written: the config is a causal LM, the weights are safetensors (we never
unpickle weights, so a `pytorch_model.bin`-only checkpoint is refused), every shard is complete (a half-copied
folder is caught by comparing each file's size with its header, and the weight names with the architecture), the
tokenizer loads, has a chat template (or one is given) and a pad token (the end-of-sequence token is used when none
is set, as TRL does). The copy is written into a staging folder beside the target and renamed into place, so a
failed import leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from training.engine.base_model import BaseModelError, SavedModel, weights_sha256
from training.engine.common import staged_output

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SINGLE_WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
# Copied as they are; the tokenizer files are written by the tokenizer itself (with the pad token and chat
# template we settled on).
MODEL_FILES = ("config.json", "generation_config.json", "README.md", "LICENSE", "LICENSE.txt", "NOTICE")
# What a hub download fetches: the config, safetensors weights and the tokenizer's files; never a pickle
# (`pytorch_model.bin`, `*.pt`), which the checks would refuse anyway.
HUB_DOWNLOAD_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.jinja",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "*.md",
    "LICENSE*",
)
# Weights are copied in pieces this big, so a multi-gigabyte shard still moves a progress bar.
COPY_CHUNK_BYTES = 16 * 2**20
_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


class ModelImportError(BaseModelError):
    """The folder is not a model we can register; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class ModelFacts:
    """What the registry records about an imported base model."""

    architecture: str
    model_type: str
    num_parameters: int
    dtype: str
    context_length: int | None
    license: str
    sha256: str
    chat_template_from: str  # "model" or "file"
    pad_token: str
    pad_token_was_missing: bool

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CheckedModel:
    folder: Path
    config: object
    tokenizer: object
    weight_files: list[Path]
    facts: ModelFacts


def resolve_source(source: str, *, revision: str | None = None, download: bool | None = None) -> Path:
    """A local model folder, or a hub id: from this host's Hugging Face cache, else downloaded from the hub
    (`download`; by default unless `HF_HUB_OFFLINE` is set) — only the files an import reads, never pickles."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision:
            raise ModelImportError("--revision applies to hub ids, not to a local folder.")
        return path.resolve()
    if path.exists():
        raise ModelImportError(
            f"{source} is a file; give the model's folder (with config.json and *.safetensors)."
        )
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise ModelImportError(f"{source} is neither a model folder nor a hub id (owner/name).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    # Read now, not at import: huggingface_hub reads its variables once, when it is first imported.
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    if download is None:
        download = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(source, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        if not download:
            raise ModelImportError(
                f"{source} is not a folder here and not in this host's Hugging Face cache "
                f"({exc.__class__.__name__}), and downloads are off (HF_HUB_OFFLINE). Fetch the model where "
                "there is network access (`hf download` or `save_pretrained`) and import the folder."
            ) from exc
    try:
        return Path(
            snapshot_download(
                source, revision=revision, cache_dir=cache_dir, allow_patterns=list(HUB_DOWNLOAD_PATTERNS)
            )
        )
    except Exception as exc:  # no network, no such repository, gated, revision unknown: all said the same way
        raise ModelImportError(
            f"{source} is not in this host's Hugging Face cache and could not be downloaded from the hub: {exc}. "
            "Where this host has no network, fetch the model elsewhere (`hf download` or `save_pretrained`) and "
            "import the folder, or set HF_HUB_OFFLINE=1 to look in the cache only."
        ) from exc


def check_model_folder(folder: Path, *, chat_template: str | None = None) -> CheckedModel:
    """Every check of the module docstring, in the order a person would fix them; writes nothing."""
    folder = Path(folder)
    config = _load_causal_lm_config(folder)
    weight_files = _weight_files(folder)
    headers = {file: _checked_header(file) for file in weight_files}
    _check_weight_names(config, headers)
    tokenizer, template_from, pad_was_missing = _checked_tokenizer(folder, config, chat_template)
    facts = ModelFacts(
        architecture=(getattr(config, "architectures", None) or [type(config).__name__])[0],
        model_type=config.model_type,
        num_parameters=sum(
            math.prod(tensor["shape"]) for header in headers.values() for tensor in _tensor_entries(header)
        ),
        dtype=_weights_dtype(config, headers),
        context_length=_context_length(config),
        license=_license(folder),
        sha256=weights_sha256(weight_files),
        chat_template_from=template_from,
        pad_token=tokenizer.pad_token,
        pad_token_was_missing=pad_was_missing,
    )
    return CheckedModel(folder, config, tokenizer, weight_files, facts)


def import_model_folder(
    checked: CheckedModel,
    target: Path,
    *,
    progress: Callable[[str], None] = print,
    on_bytes: Callable[[int, int], None] | None = None,
) -> SavedModel:
    """Copy a checked model into `target` atomically (staging folder, then one rename).

    `on_bytes(copied, total)` is called as the weights are copied (every COPY_CHUNK_BYTES), for a progress bar."""
    target = Path(target)
    if target.exists():
        raise ModelImportError(f"{target} exists already; choose another name.")
    with staged_output(target) as staging:
        for name in MODEL_FILES:
            if (checked.folder / name).is_file():
                shutil.copyfile(checked.folder / name, staging / name)
        if (checked.folder / SHARD_INDEX).is_file():
            shutil.copyfile(checked.folder / SHARD_INDEX, staging / SHARD_INDEX)
        total = sum(file.stat().st_size for file in checked.weight_files)
        copied = 0
        for file in checked.weight_files:
            with open(file, "rb") as source, open(staging / file.name, "wb") as copy:
                while chunk := source.read(COPY_CHUNK_BYTES):
                    copy.write(chunk)
                    copied += len(chunk)
                    if on_bytes is not None:
                        on_bytes(copied, total)
            progress(f"Copied {file.name} ({copied / 2**20:.0f} / {total / 2**20:.0f} MiB)")
        checked.tokenizer.save_pretrained(staging)
        if weights_sha256(sorted(staging.glob("*.safetensors"))) != checked.facts.sha256:
            raise ModelImportError(
                f"The weights in {checked.folder} changed while they were copied; try again."
            )
    config = json.loads((target / "config.json").read_text())
    return SavedModel(
        path=target, sha256=checked.facts.sha256, config=config, num_parameters=checked.facts.num_parameters
    )


def _load_causal_lm_config(folder: Path):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (folder / "config.json").is_file():
        raise ModelImportError(f"{folder} has no config.json: not a Hugging Face model folder.")
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (ValueError, OSError, KeyError) as exc:
        raise ModelImportError(f"config.json in {folder} cannot be read by transformers: {exc}") from exc
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelImportError(
            f"{folder} is a {config.model_type!r} model, not a causal language model transformers can train "
            "(AutoModelForCausalLM has no class for it)."
        )
    return config


def _weight_files(folder: Path) -> list[Path]:
    index_file = folder / SHARD_INDEX
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise ModelImportError(f"{index_file} is not a safetensors index ({exc}).") from exc
        shards = sorted(set(weight_map.values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise ModelImportError(
                f"{folder} is incomplete: {len(missing)} of {len(shards)} shards listed in {SHARD_INDEX} are "
                f"missing ({', '.join(missing[:3])}). Was the copy interrupted?"
            )
        return [folder / name for name in shards]
    if (folder / SINGLE_WEIGHTS).is_file():
        return [folder / SINGLE_WEIGHTS]
    pickled = sorted(entry.name for entry in folder.iterdir() if entry.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelImportError(
            f"{folder} holds only pickle weights ({', '.join(pickled[:3])}); they can run code when loaded, so "
            "they are never read here. Convert them to safetensors where you trust the file "
            "(`model.save_pretrained(folder, safe_serialization=True)`) and import that folder."
        )
    raise ModelImportError(f"{folder} has no weights ({SINGLE_WEIGHTS} or {SHARD_INDEX}).")


def _checked_header(file: Path) -> dict:
    """The safetensors header, after checking that the file is as long as the header says (not half-copied)."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if header_size <= 0 or 8 + header_size > size:
            raise ModelImportError(f"{file.name} is not a safetensors file (or is cut short).")
        try:
            header = json.loads(handle.read(header_size))
        except ValueError as exc:
            raise ModelImportError(f"{file.name} has an unreadable safetensors header ({exc}).") from exc
    data_end = max((tensor["data_offsets"][1] for tensor in _tensor_entries(header)), default=0)
    if 8 + header_size + data_end != size:
        raise ModelImportError(
            f"{file.name} is {size:,} bytes but its header describes {8 + header_size + data_end:,}: the file is "
            "incomplete or damaged. Copy it again."
        )
    return header


def _tensor_entries(header: dict) -> list[dict]:
    return [value for key, value in header.items() if key != "__metadata__"]


def _check_weight_names(config, headers: dict) -> None:
    """The weights must fill the architecture: build it on the meta device (no memory) and compare the names."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = set(model.state_dict())
    present = {key for header in headers.values() for key in header if key != "__metadata__"}
    tied = {
        key
        for key in expected
        if key.endswith("lm_head.weight") and getattr(config, "tie_word_embeddings", False)
    }
    missing = sorted(expected - present - tied)
    if missing:
        raise ModelImportError(
            f"The weights do not fit the {config.model_type} architecture of config.json: {len(missing)} of "
            f"{len(expected)} tensors are missing (e.g. {', '.join(missing[:3])})."
        )


def _checked_tokenizer(folder: Path, config, chat_template: str | None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise ModelImportError(f"The tokenizer in {folder} does not load: {exc}") from exc
    if isinstance(tokenizer, bool) or not hasattr(tokenizer, "apply_chat_template"):
        raise ModelImportError(f"{folder} has no tokenizer files (tokenizer.json or tokenizer_config.json).")
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ModelImportError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embeddings only {vocab_size}: "
            "they do not belong together."
        )
    template_from = "model"
    if chat_template is not None:
        tokenizer.chat_template = chat_template
        template_from = "file"
    if not tokenizer.chat_template:
        raise ModelImportError(
            f"The tokenizer in {folder} has no chat template, which every stage needs to format conversations. "
            "Give one with --chat-template FILE (a Jinja template, as in tokenizer_config.json)."
        )
    try:
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}], tokenize=False
        )
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # a template is user code: any error it raises is a bad template
        raise ModelImportError(
            f"The chat template does not render a user/assistant conversation: {exc}"
        ) from exc
    pad_was_missing = tokenizer.pad_token is None
    if pad_was_missing:
        if tokenizer.eos_token is None:
            raise ModelImportError(
                "The tokenizer has neither a pad token nor an end-of-sequence token to pad with; set one of them "
                "in tokenizer_config.json."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, template_from, pad_was_missing


def _weights_dtype(config, headers: dict) -> str:
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if declared is not None:
        return str(declared).removeprefix("torch.")
    for header in headers.values():
        for tensor in _tensor_entries(header):
            return _SAFETENSORS_DTYPES.get(tensor["dtype"], tensor["dtype"].lower())
    return "unknown"


def _context_length(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _license(folder: Path) -> str:
    """The `license:` field of the model card's front matter (how the hub records it), else empty."""
    readme = folder / "README.md"
    if not readme.is_file():
        return ""
    text = readme.read_text(errors="replace")
    front = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    field = re.search(r"^license:\s*['\"]?([^'\"\n]+)", front.group(1), re.M) if front else None
    return field.group(1).strip() if field else ""
