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


@pytest.mark.parametrize("method", ["full", "lora"])
def test_response_log_probs_equal_the_full_logits_path_with_gradients(tiny_model, method):
    model, tokenizer = tiny_model
    model = prepare_model(copy.deepcopy(model), PeftSettings(method=method))
    input_ids, attention_mask, scored = _scored_batch(tokenizer)
    results = []
    for compute in (
        lambda: _plain_response_log_probs(model, input_ids, attention_mask, scored),
        # chunks of 3 positions: several chunks and a ragged last one, each recomputed in the backward pass
        lambda: fast_paths.response_log_probs(model, input_ids, attention_mask, scored, chunk_tokens=3)[0],
    ):
        model.zero_grad(set_to_none=True)
        sums = compute()
        (sums * torch.tensor([1.0, -2.0])).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((sums.detach(), grads))
    (plain, plain_grads), (fast, fast_grads) = results
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
    tiny_model,
):
    model, tokenizer = tiny_model
    input_ids, attention_mask, scored = _scored_batch(tokenizer)
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: seen.append(output.shape)
    )
    try:
        fast_paths.response_log_probs(model, input_ids, attention_mask, scored, chunk_tokens=4)
        scored_positions = int(scored[:, 1:].sum())
        assert [shape[0] for shape in seen] == [
            min(4, scored_positions - s) for s in range(0, scored_positions, 4)
        ]
        seen.clear()
        model.config.final_logit_softcapping = 30.0  # logits are no longer a plain projection: full logits
        fast_paths.response_log_probs(model, input_ids, attention_mask, scored)
        assert seen == [(2, input_ids.shape[1], model.config.vocab_size)]
    finally:
        handle.remove()


def test_lora_experts_layer_is_the_weighted_sum_of_each_experts_low_rank_update():
    from training.engine.lora_mixture import LoraExpertsLinear, Routing

    torch.manual_seed(0)
    routing = Routing()
    layer = LoraExpertsLinear(torch.nn.Linear(8, 6), num_experts=3, rank=2, alpha=4.0, routing=routing)
    torch.nn.init.normal_(layer.lora_B)  # B starts at zero: give the experts something to add
    x = torch.randn(2, 5, 8)
    assert torch.equal(layer(x), layer.base(x))  # no routing: the experts are off
    routing.weights = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    expected = layer.base(x) + layer.scaling * sum(
        routing.weights[:, e, None, None] * (x @ layer.lora_A[e].T @ layer.lora_B[e].T) for e in range(3)
    )
    torch.testing.assert_close(layer(x), expected)
