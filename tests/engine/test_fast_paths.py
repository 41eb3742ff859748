"""The GPU levers compute the same function as the plain path (CI runs them on a CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from training.engine import fast_paths
from training.engine.common import PeftSettings
from training.engine.finetuning_methods import prepare_model


@pytest.fixture
def tiny_model(tiny_model_dir):
    from training.engine.base_model import load_saved_model

    model, tokenizer = load_saved_model(tiny_model_dir)
    return model.train(), tokenizer


def _loss_and_gradients(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    return float(loss.detach()), {
        name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("method", ["full", "lora"])
def test_compiled_decoder_layers_give_the_plain_loss_and_gradients(tiny_model, method):
    model, tokenizer = tiny_model
    plain = prepare_model(copy.deepcopy(model), PeftSettings(method=method))
    compiled = copy.deepcopy(plain)
    assert fast_paths.compile_decoder_layers(compiled, backend="aot_eager") == len(
        fast_paths.decoder_layers(plain)
    )
    for texts in (["a short one", "and a somewhat longer second text"], ["three", "rows of", "other length"]):
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        plain_loss, plain_grads = _loss_and_gradients(plain, batch)
        compiled_loss, compiled_grads = _loss_and_gradients(compiled, batch)
        assert compiled_loss == pytest.approx(plain_loss, rel=1e-5)
        assert plain_grads.keys() == compiled_grads.keys() and plain_grads
        for name, gradient in plain_grads.items():
            torch.testing.assert_close(compiled_grads[name], gradient, rtol=1e-4, atol=1e-6)


def test_compiling_is_asked_for_and_only_on_cuda():
    class Config:
        compile = True

    assert fast_paths.use_compiled_layers(Config(), "cuda")
    assert not fast_paths.use_compiled_layers(Config(), "cpu")
    Config.compile = False
    assert not fast_paths.use_compiled_layers(Config(), "cuda")
    assert fast_paths.trainer_optimizer_name("cuda") == "adamw_torch_fused"
    assert fast_paths.trainer_optimizer_name("cpu") == "adamw_torch"


def test_a_model_without_decoder_layers_is_refused_by_name():
    with pytest.raises(ValueError, match="layers"):
        fast_paths.decoder_layers(torch.nn.Linear(2, 2))
