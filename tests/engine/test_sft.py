"""SFT stage: loss falls, the model reproduces a memorised reply, only assistant turns are learned."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

from training.engine import sft
from training.engine.common import ModelRef, PeftSettings, StageInputs
from training.engine.finetuning_methods import load_model_ref

QUESTION = "What is the capital of Zorbia?"
ANSWER = "Blorptown, of course."


def memorise_rows(count: int = 8) -> Dataset:
    return Dataset.from_list(
        [{"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}]
        * count
    )


def greedy_reply(model, tokenizer, question: str) -> str:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    return tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)


def test_prompt_completion_rows_one_per_assistant_turn():
    conversation = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]
    rows = sft.prompt_completion_rows(Dataset.from_list([{"messages": conversation}]))
    assert [row["completion"][0]["content"] for row in rows] == ["a1", "a2"]
    assert [len(row["prompt"]) for row in rows] == [2, 4]


def test_full_sft_loss_falls_and_reproduces_target_reply(tiny_model_dir, tmp_path):
    config = sft.SftStageConfig(
        max_steps=20, learning_rate=3e-3, batch_size=4, max_length=64, checkpoint_every=0, device="cpu"
    )
    losses = []
    result = sft.run(
        config,
        StageInputs(
            memorise_rows(),
            ModelRef(tiny_model_dir),
            tmp_path / "sft",
            lambda metrics: losses.append(metrics.values["loss"]) if "loss" in metrics.values else None,
        ),
    )
    assert result.status == "completed" and result.steps_completed == 20
    assert len(losses) == 20 and losses[-1] < 0.8 * losses[0]
    assert result.metrics["train_loss"] == losses[-1] and result.metrics["train_first_loss"] == losses[0]

    model, tokenizer = load_model_ref(ModelRef(result.artifact_path), "cpu")
    base_model, _ = load_model_ref(ModelRef(tiny_model_dir), "cpu")
    assert greedy_reply(model.eval(), tokenizer, QUESTION).startswith(ANSWER)
    assert not greedy_reply(base_model.eval(), tokenizer, QUESTION).startswith(ANSWER)


def test_adapter_sft_writes_adapter_only_artifact_and_base_is_unchanged(tiny_model_dir, tmp_path):
    base_weights = (tiny_model_dir / "model.safetensors").read_bytes()
    config = sft.SftStageConfig(
        max_steps=6,
        learning_rate=3e-2,
        batch_size=4,
        max_length=64,
        checkpoint_every=0,
        device="cpu",
        peft=PeftSettings(method="adapter", adapter_bottleneck=16),
    )
    losses = []
    result = sft.run(
        config,
        StageInputs(
            memorise_rows(4),
            ModelRef(tiny_model_dir, name="tiny"),
            tmp_path / "sft-adapter",
            lambda metrics: losses.append(metrics.values["loss"]) if "loss" in metrics.values else None,
        ),
    )
    assert losses[-1] < losses[0]
    artifact = result.artifact_path
    assert (artifact / "adapter.safetensors").is_file() and not (artifact / "model.safetensors").exists()
    manifest = json.loads((artifact / "stage.json").read_text())
    assert manifest["layout"] == "bottleneck_adapter" and manifest["base_path"] == str(
        tiny_model_dir.resolve()
    )
    assert (tiny_model_dir / "model.safetensors").read_bytes() == base_weights

    # The registry can point at the adapter artifact alone: loading follows stage.json to the base.
    adapted, _ = load_model_ref(ModelRef(artifact), "cpu")
    base_model, _ = load_model_ref(ModelRef(tiny_model_dir), "cpu")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(adapted(ids).logits, base_model(ids).logits)


def test_loader_processes_collate_the_same_batches_as_the_training_process(
    tiny_model_dir, tmp_path, monkeypatch
):
    """On CUDA the Trainer stages collate in two loader processes; the batches, so the losses, are the ones
    collated in the training process (forced here on the CPU, where the stages use none)."""
    from training.engine import hf_stage

    rows = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}?"},
                    {"role": "assistant", "content": "x" * i},
                ]
            }
            for i in range(1, 9)
        ]
    )
    config = sft.SftStageConfig(
        max_steps=4, learning_rate=1e-3, batch_size=2, max_length=64, checkpoint_every=0, device="cpu"
    )

    def losses_of(run_name: str) -> list[float]:
        losses = []
        sft.run(
            config,
            StageInputs(
                rows,
                ModelRef(tiny_model_dir),
                tmp_path / run_name,
                lambda metrics: losses.append(metrics.values["loss"]) if "loss" in metrics.values else None,
            ),
        )
        return losses

    assert hf_stage.dataloader_workers_for(torch.device("cpu")) == 0
    assert hf_stage.dataloader_workers_for(torch.device("cuda")) == hf_stage.LOADER_WORKERS_ON_CUDA == 2
    in_process = losses_of("in-process")
    monkeypatch.setattr(hf_stage, "dataloader_workers_for", lambda device: 2)
    arguments = hf_stage.trainer_arguments(config, tmp_path / "checkpoints")
    assert arguments["dataloader_num_workers"] == 2 and arguments["dataloader_persistent_workers"]
    assert len(in_process) == 4 and len(set(in_process)) == 4  # four different batches
    assert losses_of("loader-processes") == pytest.approx(in_process, rel=1e-6)
