"""LoRA and adapters on a frozen bf16 base: the dtype rule, and training that learns with fp32 trained parameters."""

from __future__ import annotations

import pytest
import torch

from tests.engine.test_sft import memorise_rows
from training.engine import reward_model, sft
from training.engine.common import ModelRef, PeftSettings, StageConfigError, StageInputs
from training.engine.finetuning_methods import base_dtype_for, base_parameters, trainable_parameters


@pytest.mark.parametrize(
    ("device", "method", "asked", "dtype"),
    [
        ("cuda", "lora", "auto", torch.bfloat16),
        ("cuda:1", "adapter", "auto", torch.bfloat16),
        ("cuda", "full", "auto", torch.float32),  # fp32 master weights, bf16 autocast
        ("cpu", "lora", "auto", torch.float32),
        ("cpu", "adapter", "auto", torch.float32),
        ("cpu", "lora", "bfloat16", torch.bfloat16),
        ("cuda", "lora", "float32", torch.float32),
        ("cuda", "full", "float32", torch.float32),
    ],
)
def test_the_frozen_base_is_bf16_under_lora_and_adapters_on_cuda(device, method, asked, dtype):
    assert base_dtype_for(torch.device(device), PeftSettings(method=method, base_dtype=asked)) == dtype


def test_a_bf16_base_for_full_fine_tuning_is_refused():
    with pytest.raises(StageConfigError, match="full fine-tuning trains every weight"):
        PeftSettings(method="full", base_dtype="bfloat16")
    with pytest.raises(StageConfigError):
        PeftSettings(method="lora", base_dtype="float16")


def _capture_prepared(monkeypatch, module) -> list[tuple[set, set, list[str]]]:
    """(dtypes of the trained parameters, of the frozen ones, trained names) of each model a stage prepares, as
    `prepare_model` hands it over (a LoRA model is merged when its artifact is saved)."""
    prepared = []
    real = module.prepare_model

    def capturing(model, settings):
        model = real(model, settings)
        trained, frozen = trainable_parameters(model), base_parameters(model)
        prepared.append((_dtypes(trained), _dtypes(frozen), list(trained)))
        return model

    monkeypatch.setattr(module, "prepare_model", capturing)
    return prepared


def _dtypes(parameters: dict) -> set:
    return {parameter.dtype for parameter in parameters.values()}


def _sft_losses(tiny_model_dir, out_dir, peft: PeftSettings) -> list[float]:
    config = sft.SftStageConfig(
        max_steps=12,
        learning_rate=1e-2,
        batch_size=4,
        max_length=64,
        checkpoint_every=0,
        device="cpu",
        peft=peft,
    )
    losses = []
    result = sft.run(
        config,
        StageInputs(
            memorise_rows(),
            ModelRef(tiny_model_dir),
            out_dir,
            lambda metrics: losses.append(metrics.values["loss"]) if "loss" in metrics.values else None,
        ),
    )
    assert result.status == "completed" and len(losses) == 12
    return losses


def test_lora_sft_on_a_bf16_base_learns_as_on_fp32_with_fp32_lora_weights(
    tiny_model_dir, tmp_path, monkeypatch
):
    prepared = _capture_prepared(monkeypatch, sft)
    fp32 = _sft_losses(tiny_model_dir, tmp_path / "fp32", PeftSettings(method="lora", lora_r=8))
    bf16 = _sft_losses(
        tiny_model_dir, tmp_path / "bf16", PeftSettings(method="lora", lora_r=8, base_dtype="bfloat16")
    )
    assert bf16[-1] < 0.92 * bf16[0], bf16
    # The same trajectory as on an fp32 base, within bf16's rounding of the frozen weights.
    assert torch.allclose(torch.tensor(bf16), torch.tensor(fp32), rtol=0.02), (bf16, fp32)
    assert [dtypes[:2] for dtypes in prepared] == [
        ({torch.float32}, {torch.float32}),
        ({torch.float32}, {torch.bfloat16}),  # fp32 LoRA pairs over the bf16 frozen base
    ]


def test_an_adapter_on_a_bf16_base_learns_with_fp32_adapter_weights(tiny_model_dir, tmp_path, monkeypatch):
    prepared = _capture_prepared(monkeypatch, sft)
    losses = _sft_losses(
        tiny_model_dir, tmp_path / "adapter", PeftSettings(method="adapter", base_dtype="bfloat16")
    )
    assert losses[-1] < losses[0] - 0.2, losses
    assert prepared[0][:2] == ({torch.float32}, {torch.bfloat16})


def test_a_lora_reward_model_on_a_bf16_base_trains_its_fp32_head(tiny_model_dir, tmp_path, monkeypatch):
    from datasets import Dataset

    prepared = _capture_prepared(monkeypatch, reward_model)
    rows = [
        {"prompt": [{"role": "user", "content": f"Question {n}?"}],
         "chosen": [{"role": "assistant", "content": f"Sure! The answer is {n}."}],
         "rejected": [{"role": "assistant", "content": "no"}]}
        for n in range(8)
    ]  # fmt: skip
    config = reward_model.RewardStageConfig(
        max_steps=6, learning_rate=5e-3, batch_size=4, max_length=64, checkpoint_every=0, device="cpu",
        held_out_fraction=0.25, peft=PeftSettings(method="lora", base_dtype="bfloat16", lora_r=8),
    )  # fmt: skip
    losses = []
    result = reward_model.run(
        config,
        StageInputs(
            Dataset.from_list(rows),
            ModelRef(tiny_model_dir),
            tmp_path / "reward",
            lambda metrics: losses.append(metrics.values["loss"]) if "loss" in metrics.values else None,
        ),
    )
    assert result.status == "completed" and losses and all(torch.isfinite(torch.tensor(losses)))
    trained_dtypes, frozen_dtypes, trained = prepared[0]
    assert (trained_dtypes, frozen_dtypes) == ({torch.float32}, {torch.bfloat16})
    assert any("score" in name for name in trained)  # the new head, trained fully beside the LoRA pairs
