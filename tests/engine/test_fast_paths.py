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


def _plain_response_log_probs(model, input_ids, attention_mask, scored_mask):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    token_log_probs = logits.log_softmax(-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token_log_probs * scored_mask[:, 1:]).sum(-1)


def _scored_batch(tokenizer):
    batch = tokenizer(["a prompt and its answer", "another prompt, a longer answer here"], return_tensors="pt",
                      padding=True)  # fmt: skip
    scored = batch["attention_mask"].clone()
    scored[:, :3] = 0  # the "prompt": not scored
    return batch["input_ids"], batch["attention_mask"], scored


def _sums_and_gradients(model, compute, weights: torch.Tensor, autocast: bool = False):
    """Runs one log-prob computation and its backward of `weights · sums`: (sums, each parameter's gradient)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        sums = compute()
    (sums * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return sums.detach(), grads


@pytest.mark.parametrize("method", ["full", "lora"])
def test_response_log_probs_equal_the_full_logits_path_with_gradients(tiny_model, method):
    model, tokenizer = tiny_model
    model = prepare_model(copy.deepcopy(model), PeftSettings(method=method))
    input_ids, attention_mask, scored = _scored_batch(tokenizer)
    (plain, plain_grads), (fast, fast_grads) = (
        _sums_and_gradients(model, compute, torch.tensor([1.0, -2.0]))
        for compute in (
            lambda: _plain_response_log_probs(model, input_ids, attention_mask, scored),
            # chunks of 3 positions: several chunks and a ragged last one, each recomputed in the backward pass
            lambda: fast_paths.response_log_probs(model, input_ids, attention_mask, scored, chunk_tokens=3)[
                0
            ],
        )
    )
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert fast_grads.keys() == plain_grads.keys() and plain_grads
    for (
        name,
        gradient,
    ) in plain_grads.items():  # chunked sums round differently: tolerance on the gradient's scale
        scale = float(gradient.abs().max())
        torch.testing.assert_close(fast_grads[name], gradient, rtol=1e-4, atol=1e-4 * scale)
    counts = fast_paths.response_log_probs(model, input_ids, attention_mask, scored)[1]
    assert counts.tolist() == scored[:, 1:].sum(-1).tolist()


def test_response_log_probs_send_only_scored_positions_through_the_output_layer_unless_soft_capped(
    tiny_model, monkeypatch
):
    model, tokenizer = tiny_model
    input_ids, attention_mask, scored = _scored_batch(tokenizer)
    chunk_rows = []
    real_chunk_logits = fast_paths._chunk_logits
    monkeypatch.setattr(
        fast_paths,
        "_chunk_logits",
        lambda hidden, weight: chunk_rows.append(len(hidden)) or real_chunk_logits(hidden, weight),
    )
    fast_paths.response_log_probs(model, input_ids, attention_mask, scored, chunk_tokens=4)
    scored_positions = int(scored[:, 1:].sum())
    assert chunk_rows == [min(4, scored_positions - s) for s in range(0, scored_positions, 4)]
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: seen.append(output.shape)
    )
    try:
        model.config.final_logit_softcapping = 30.0  # logits are no longer a plain projection: full logits
        fast_paths.response_log_probs(model, input_ids, attention_mask, scored)
        assert seen == [(2, input_ids.shape[1], model.config.vocab_size)]
    finally:
        handle.remove()


def test_scored_positions_given_by_the_caller_give_the_same_sums(tiny_model):
    model, tokenizer = tiny_model
    input_ids, attention_mask, scored = _scored_batch(tokenizer)
    positions = fast_paths.scored_positions_of(scored)
    assert len(positions) == int(scored[:, 1:].sum())
    with torch.no_grad():
        found = fast_paths.response_log_probs(model, input_ids, attention_mask, scored)[0]
        given = fast_paths.response_log_probs(
            model, input_ids, attention_mask, scored, scored_positions=positions
        )[0]
        plain = _plain_response_log_probs(model, input_ids, attention_mask, scored)
    torch.testing.assert_close(given, found)
    torch.testing.assert_close(given, plain, rtol=1e-5, atol=1e-5)


def test_response_log_probs_under_autocast_recompute_in_the_forwards_dtype(tiny_model):
    """Autocast does not reach a custom backward: the recomputed logits must still be bf16 like the forward's."""
    model, tokenizer = tiny_model
    input_ids, attention_mask, scored = _scored_batch(tokenizer)
    (plain, plain_grads), (fast, fast_grads) = (
        _sums_and_gradients(model, compute, torch.ones(2), autocast=True)
        for compute in (
            lambda: _plain_response_log_probs(model, input_ids, attention_mask, scored),
            lambda: fast_paths.response_log_probs(model, input_ids, attention_mask, scored, chunk_tokens=5)[
                0
            ],
        )
    )
    name = next(n for n, p in model.named_parameters() if p is model.get_output_embeddings().weight)
    plain_grad, fast_grad = plain_grads[name], fast_grads[name]
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, plain, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(fast_grad, plain_grad, rtol=2e-2, atol=2e-2 * float(plain_grad.abs().max()))
