"""`import_base_model` registers a real, loadable model once: the tiny twin in every run, the real one as slow."""

import shutil

import pytest
import torch
from django.core.management import call_command

from registry.artifacts import base_model_folder, model_version_folder
from registry.models import ModelVersion
from training.engine.base_model import load_saved_model, sha256_file

pytestmark = pytest.mark.django_db


def _generate(version: ModelVersion) -> tuple[list[int], str]:
    """Eight new tokens, greedy, for a chat prompt: their ids and their text."""
    model, tokenizer = load_saved_model(model_version_folder(version))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1] :]
    return new.tolist(), tokenizer.decode(new, skip_special_tokens=True)


def test_import_tiny_registers_a_loadable_model_once(capsys):
    call_command("import_base_model", "--tiny")
    assert "Imported model version" in capsys.readouterr().out
    version = ModelVersion.objects.get()
    assert version.kind == ModelVersion.Kind.POLICY
    assert version.parent is None
    artifact = model_version_folder(version)
    assert version.sha256 == sha256_file(artifact / "model.safetensors")
    assert version.config["model_type"] == "llama"
    assert version.config["vocab_size"] == 49152
    assert 1_000_000 < version.num_parameters < 10_000_000
    assert not list(artifact.parent.glob(".tmp-*")), "no staging folder left behind"
    new_tokens, _ = _generate(version)
    assert len(new_tokens) == 8 and all(0 <= token < 49152 for token in new_tokens)

    call_command("import_base_model", "--tiny")
    assert "Already registered" in capsys.readouterr().out
    assert ModelVersion.objects.count() == 1


def test_import_registers_a_complete_artifact_left_by_an_interrupted_run(tiny_model_dir):
    target = base_model_folder("SmolLM2-tiny-random")
    shutil.copytree(tiny_model_dir, target)
    call_command("import_base_model", "--tiny")
    version = ModelVersion.objects.get()
    assert version.sha256 == sha256_file(tiny_model_dir / "model.safetensors")


@pytest.mark.slow
def test_import_real_bundled_smollm2_answers_sensibly():
    call_command("import_base_model")
    version = ModelVersion.objects.get(name="SmolLM2-135M-Instruct")
    assert 130_000_000 < version.num_parameters < 140_000_000
    assert version.config["num_hidden_layers"] == 30
    assert "quantization_config" not in version.config
    assert "Paris" in _generate(version)[1]
