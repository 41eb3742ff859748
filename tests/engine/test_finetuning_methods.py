"""PEFT plumbing: which parameters each method trains, LoRA keeps the base bit-identical, save/load round trips."""

from __future__ import annotations

import pytest
import torch

from training.engine import adapters
from training.engine.common import ModelRef, PeftSettings
from training.engine.finetuning_methods import (
    base_parameters,
    disabled_adapters,
    load_model_ref,
    load_trainable,
    prepare_model,
    save_trainable,
    trainable_parameters,
)


def tiny(tiny_model_dir, task="causal_lm"):
    model, tokenizer = load_model_ref(ModelRef(tiny_model_dir), "cpu", task=task)
    return model, tokenizer


def inputs_for(tokenizer):
    return tokenizer(["Hello there, general", "A short one"], return_tensors="pt", padding=True)


def few_steps(model, inputs, steps=3):
    optimizer = torch.optim.AdamW(list(trainable_parameters(model).values()), lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_each_method_trains_exactly_its_parameters(tiny_model_dir):
    full, _ = tiny(tiny_model_dir)
    full = prepare_model(full, PeftSettings(method="full"))
    assert len(trainable_parameters(full)) == len(list(full.parameters()))

    lora, _ = tiny(tiny_model_dir)
    lora = prepare_model(lora, PeftSettings(method="lora", lora_r=4))
    assert trainable_parameters(lora) and all("lora_" in name for name in trainable_parameters(lora))

    adapted, _ = tiny(tiny_model_dir)
    adapted = prepare_model(adapted, PeftSettings(method="adapter", adapter_bottleneck=8))
    assert trainable_parameters(adapted)
    assert all("bottleneck_adapters" in name for name in trainable_parameters(adapted))

    # A reward model's new score head is always trained, whatever the method.
    for method in ("lora", "adapter"):
        reward_model, _ = tiny(tiny_model_dir, task="reward")
        reward_model = prepare_model(
            reward_model, PeftSettings(method=method, lora_r=4, adapter_bottleneck=8)
        )
        assert any("score" in name for name in trainable_parameters(reward_model)), method


def test_lora_training_keeps_base_bit_identical_and_round_trips(tiny_model_dir, tmp_path):
    model, tokenizer = tiny(tiny_model_dir)
    inputs = inputs_for(tokenizer)
    with torch.no_grad():
        base_logits = model(**inputs).logits
    model = prepare_model(model, PeftSettings(method="lora", lora_r=4))
    frozen_before = {name: tensor.detach().clone() for name, tensor in base_parameters(model).items()}
    few_steps(model, inputs)
    for name, tensor in base_parameters(model).items():
        assert torch.equal(tensor, frozen_before[name]), name
    with torch.no_grad():
        tuned_logits = model(**inputs).logits
        assert not torch.allclose(tuned_logits, base_logits)
        with disabled_adapters(model):
            assert torch.allclose(model(**inputs).logits, base_logits, atol=1e-6)

    save_trainable(model, tmp_path / "lora")
    fresh, _ = tiny(tiny_model_dir)
    fresh = load_trainable(fresh, tmp_path / "lora").eval()
    with torch.no_grad():
        assert torch.allclose(fresh(**inputs).logits, tuned_logits, atol=1e-6)


def test_adapter_save_trainable_round_trip_and_disable(tiny_model_dir, tmp_path):
    model, tokenizer = tiny(tiny_model_dir)
    inputs = inputs_for(tokenizer)
    with torch.no_grad():
        base_logits = model(**inputs).logits
    model = prepare_model(model, PeftSettings(method="adapter", adapter_bottleneck=8, adapter_name="style"))
    few_steps(model, inputs)
    with torch.no_grad():
        tuned_logits = model(**inputs).logits
        with disabled_adapters(model):
            assert torch.equal(model(**inputs).logits, base_logits)
    save_trainable(model, tmp_path / "adapter")
    fresh, _ = tiny(tiny_model_dir)
    fresh = load_trainable(fresh, tmp_path / "adapter").eval()
    assert adapters.active_adapter(fresh) == "style"
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, tuned_logits)


def test_full_model_has_no_adapter_to_disable(tiny_model_dir):
    model, _ = tiny(tiny_model_dir)
    with pytest.raises(ValueError):
        with disabled_adapters(model):
            pass
