"""Bottleneck adapters: identity at start, several per base, switchable, saved and loaded, base never changes."""

from __future__ import annotations

import pytest
import torch

from training.engine import adapters
from training.engine.common import ModelRef
from training.engine.finetuning_methods import load_model_ref


@pytest.fixture()
def tiny_model(tiny_model_dir):
    model, tokenizer = load_model_ref(ModelRef(tiny_model_dir), "cpu")
    return model.eval(), tokenizer


@pytest.fixture()
def sample_inputs(tiny_model):
    _, tokenizer = tiny_model
    return tokenizer(["The quick brown fox", "jumps over"], return_tensors="pt", padding=True)


def logits_of(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def train_adapter_briefly(model, name: str, inputs, steps: int = 3, seed: int = 0) -> None:
    """A few real optimizer steps on the language-model loss, only the adapter trainable."""
    torch.manual_seed(seed)
    adapters.set_active_adapter(model, name)
    adapters.freeze_base_train_adapter(model, name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_new_adapter_is_identity_and_base_keys_unchanged(tiny_model, sample_inputs):
    model, _ = tiny_model
    base_keys = set(model.state_dict())
    before = logits_of(model, sample_inputs)
    adapters.add_adapter(model, "first", bottleneck=8)
    assert adapters.active_adapter(model) == "first"
    assert torch.equal(logits_of(model, sample_inputs), before)  # zero up-projection: exactly the identity
    assert base_keys <= set(model.state_dict())  # hooks, not wrappers: every base parameter keeps its name
    assert len(adapters.adapter_parameters(model, "first")) == 4 * len(adapters.transformer_layers(model))


def test_two_adapters_differ_switching_works_and_base_stays_bit_identical(tiny_model, sample_inputs):
    model, _ = tiny_model
    base_before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    base_logits = logits_of(model, sample_inputs)
    adapters.add_adapter(model, "first", bottleneck=8)
    adapters.add_adapter(model, "second", bottleneck=8)
    train_adapter_briefly(model, "first", sample_inputs, seed=1)
    train_adapter_briefly(model, "second", sample_inputs, steps=5, seed=2)

    adapters.set_active_adapter(model, "first")
    first_logits = logits_of(model, sample_inputs)
    adapters.set_active_adapter(model, "second")
    second_logits = logits_of(model, sample_inputs)
    assert not torch.allclose(first_logits, base_logits)
    assert not torch.allclose(first_logits, second_logits)

    adapters.set_active_adapter(model, "first")  # switching back reproduces the first adapter exactly
    assert torch.equal(logits_of(model, sample_inputs), first_logits)
    with adapters.adapters_disabled(model):
        assert torch.equal(logits_of(model, sample_inputs), base_logits)
    assert adapters.active_adapter(model) == "first"
    adapters.set_active_adapter(model, None)
    assert torch.equal(logits_of(model, sample_inputs), base_logits)

    state = model.state_dict()
    for name, tensor in base_before.items():
        assert torch.equal(state[name], tensor), name


def test_save_and_load_round_trip(tiny_model, tiny_model_dir, sample_inputs, tmp_path):
    model, _ = tiny_model
    adapters.add_adapter(model, "tuned", bottleneck=8)
    train_adapter_briefly(model, "tuned", sample_inputs)
    expected = logits_of(model, sample_inputs)
    adapters.save_adapter(model, "tuned", tmp_path / "tuned")
    assert {p.name for p in (tmp_path / "tuned").iterdir()} == {"adapter.safetensors", "adapter.json"}

    fresh, _ = load_model_ref(ModelRef(tiny_model_dir), "cpu")
    name = adapters.load_adapter(fresh.eval(), tmp_path / "tuned", name="reloaded")
    assert name == "reloaded" and adapters.active_adapter(fresh) == "reloaded"
    assert torch.equal(logits_of(fresh, sample_inputs), expected)
    with pytest.raises(ValueError):
        adapters.add_adapter(fresh, "reloaded")
    with pytest.raises(KeyError):
        adapters.set_active_adapter(fresh, "missing")
