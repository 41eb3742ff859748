"""Bring your own base model: any causal LM folder is checked, then copied atomically; bad folders are refused."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.model_zoo import ARCHITECTURES, build_tiny_model_folder
from training.engine import model_import
from training.engine.base_model import describe_saved_model, load_saved_model
from training.engine.model_import import ModelImportError, check_model_folder, import_model_folder


def _imported(tmp_path, source):
    checked = check_model_folder(source)
    return checked, import_model_folder(checked, tmp_path / "registry" / "imported", progress=lambda _: None)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_is_checked_recorded_and_loads_after_import(tmp_path, architecture):
    source = build_tiny_model_folder(tmp_path / architecture, architecture)
    checked, saved = _imported(tmp_path, source)

    original = AutoModelForCausalLM.from_pretrained(str(source))
    facts = checked.facts
    assert facts.model_type == architecture
    assert facts.architecture == type(original).__name__
    assert facts.num_parameters == sum(tensor.numel() for tensor in original.state_dict().values()) - (
        original.lm_head.weight.numel() if original.config.tie_word_embeddings else 0
    )
    assert (facts.dtype, facts.context_length, facts.chat_template_from) == ("float32", 512, "model")
    assert saved.sha256 == facts.sha256 == describe_saved_model(saved.path).sha256

    model, tokenizer = load_saved_model(saved.path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        ours = model(**prompt).logits
        theirs = original.eval()(**prompt).logits
    assert torch.equal(ours, theirs)


def test_sharded_weights_are_copied_and_hashed_as_one_model(tmp_path):
    source = build_tiny_model_folder(tmp_path / "sharded", "qwen2", max_shard_size="2MB")
    assert len(list(source.glob("*.safetensors"))) > 1
    checked, saved = _imported(tmp_path, source)
    assert describe_saved_model(saved.path).sha256 == checked.facts.sha256
    assert describe_saved_model(saved.path).num_parameters == checked.facts.num_parameters
    model, _ = load_saved_model(saved.path)
    assert type(model).__name__ == "Qwen2ForCausalLM"


def test_missing_chat_template_is_refused_unless_one_is_given(tmp_path):
    source = build_tiny_model_folder(tmp_path / "plain", "mistral", chat_template=False)
    with pytest.raises(ModelImportError, match="no chat template.*--chat-template"):
        check_model_folder(source)

    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    checked = check_model_folder(source, chat_template=template)
    saved = import_model_folder(checked, tmp_path / "registry" / "plain", progress=lambda _: None)
    assert checked.facts.chat_template_from == "file"
    reloaded = AutoTokenizer.from_pretrained(str(saved.path))
    assert reloaded.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "<user>x\n"


def test_a_broken_chat_template_is_refused(tmp_path):
    source = build_tiny_model_folder(tmp_path / "plain", "llama", chat_template=False)
    with pytest.raises(ModelImportError, match="does not render"):
        check_model_folder(source, chat_template="{{ raise_exception('no') }}")


def test_missing_pad_token_becomes_the_eos_token_in_the_registry_copy(tmp_path):
    source = build_tiny_model_folder(tmp_path / "nopad", "gemma", pad_token=False)
    assert AutoTokenizer.from_pretrained(str(source)).pad_token is None
    checked, saved = _imported(tmp_path, source)
    assert checked.facts.pad_token_was_missing
    reloaded = AutoTokenizer.from_pretrained(str(saved.path))
    assert reloaded.pad_token == reloaded.eos_token == checked.facts.pad_token


def test_license_comes_from_the_model_card_front_matter(tmp_path):
    source = build_tiny_model_folder(tmp_path / "licensed", "llama")
    (source / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# A model\n")
    checked, saved = _imported(tmp_path, source)
    assert checked.facts.license == "apache-2.0"
    assert (saved.path / "README.md").is_file()


def _refused_without_trace(tmp_path, source, match):
    with pytest.raises(ModelImportError, match=match):
        checked = check_model_folder(source)
        import_model_folder(checked, tmp_path / "registry" / "bad", progress=lambda _: None)
    assert not (tmp_path / "registry").exists() or not any((tmp_path / "registry").iterdir())


def test_pickle_only_checkpoint_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    source = build_tiny_model_folder(tmp_path / "pickled", "llama")
    state = AutoModelForCausalLM.from_pretrained(str(source)).state_dict()
    (source / "model.safetensors").unlink()
    torch.save(state, source / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    _refused_without_trace(tmp_path, source, "only pickle weights.*pytorch_model.bin.*safetensors")


def test_half_copied_weights_are_refused(tmp_path):
    source = build_tiny_model_folder(tmp_path / "cut", "qwen2")
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _refused_without_trace(tmp_path, source, "incomplete or damaged")


def test_a_missing_shard_is_refused(tmp_path):
    source = build_tiny_model_folder(tmp_path / "shards", "llama", max_shard_size="2MB")
    sorted(source.glob("model-*.safetensors"))[-1].unlink()
    _refused_without_trace(tmp_path, source, "shards listed in model.safetensors.index.json are missing")


def test_weights_of_another_shape_of_model_are_refused(tmp_path):
    source = build_tiny_model_folder(tmp_path / "other", "llama")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    _refused_without_trace(tmp_path, source, "do not fit the llama architecture")


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    source = tmp_path / "vision"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "vit"}))
    _refused_without_trace(tmp_path, source, "'vit' model, not a causal language model")


def test_a_folder_without_tokenizer_is_refused(tmp_path):
    source = build_tiny_model_folder(tmp_path / "weights-only", "mistral")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (source / name).unlink(missing_ok=True)
    _refused_without_trace(tmp_path, source, "tokenizer")


def test_a_failed_copy_leaves_nothing_behind(tmp_path, monkeypatch):
    source = build_tiny_model_folder(tmp_path / "ok", "llama")
    checked = check_model_folder(source)
    monkeypatch.setattr(model_import, "COPY_CHUNK_BYTES", 64 * 1024)  # several chunks, so it fails mid-file

    def disk_full_half_way(copied: int, total: int) -> None:
        if copied > total // 2:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        import_model_folder(
            checked, tmp_path / "registry" / "ok", progress=lambda _: None, on_bytes=disk_full_half_way
        )
    assert list((tmp_path / "registry").iterdir()) == []


def cache_hub_model(cache: Path, repo_id: str, folder: Path, commit: str, *, ref: str = "main") -> Path:
    """`folder` laid out as huggingface_hub's cache holds a downloaded snapshot: snapshots/<commit>/ and refs/<ref>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


def test_a_source_is_a_folder_or_a_hub_id_found_in_the_cache_at_its_revision(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = build_tiny_model_folder(tmp_path / "local", "llama")
    assert model_import.resolve_source(str(folder)) == folder.resolve()
    with pytest.raises(ModelImportError, match="--revision applies to hub ids"):
        model_import.resolve_source(str(folder), revision="main")
    with pytest.raises(ModelImportError, match="neither a model folder nor a hub id"):
        model_import.resolve_source(str(tmp_path / "nowhere" / "deep"))
    main = cache_hub_model(tmp_path / "hub", "someone/tiny-llama", folder, "a" * 40)
    older = cache_hub_model(tmp_path / "hub", "someone/tiny-llama", folder, "b" * 40, ref="v1")
    assert model_import.resolve_source("someone/tiny-llama", download=False) == main
    assert model_import.resolve_source("someone/tiny-llama", revision="v1", download=False) == older
    assert model_import.resolve_source("someone/tiny-llama", revision="b" * 40, download=False) == older
    checked = check_model_folder(model_import.resolve_source("someone/tiny-llama", download=False))
    assert checked.facts.model_type == "llama"
    with pytest.raises(ModelImportError, match="not in this host's Hugging Face cache.*downloads are off"):
        model_import.resolve_source("someone/tiny-llama", revision="v2", download=False)


def test_a_hub_id_missing_from_the_cache_is_downloaded_without_pickles_unless_offline(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = build_tiny_model_folder(tmp_path / "local", "qwen2")
    calls = []

    def hub(repo_id, *, revision=None, cache_dir=None, local_files_only=False, allow_patterns=None):
        calls.append({"local_files_only": local_files_only, "allow_patterns": allow_patterns})
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        if repo_id != "someone/tiny-qwen":
            raise OSError(f"404 for {repo_id}")  # what an unknown repository comes to
        return str(cache_hub_model(Path(cache_dir), repo_id, folder, "c" * 40))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelImportError, match="downloads are off"):
        model_import.resolve_source("someone/tiny-qwen")
    assert [call["local_files_only"] for call in calls] == [True]  # the cache only

    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls.clear()
    fetched = model_import.resolve_source("someone/tiny-qwen")
    assert (
        fetched.is_relative_to(tmp_path / "hub") and check_model_folder(fetched).facts.model_type == "qwen2"
    )
    assert [call["local_files_only"] for call in calls] == [True, False]  # the cache first, then the hub
    patterns = calls[1]["allow_patterns"]
    needed = ("model.safetensors", "model.safetensors.index.json", "config.json", "tokenizer.json",
              "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "LICENSE")  # fmt: skip
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in needed)
    assert not any(
        fnmatch.fnmatch(name, pattern)
        for name in ("pytorch_model.bin", "model.pt", "training_args.bin", "optimizer.pt")
        for pattern in patterns
    )
    with pytest.raises(
        ModelImportError, match="could not be downloaded from the hub: 404 for someone/absent"
    ):
        model_import.resolve_source("someone/absent")
