"""The GPU levers every stage shares, each a no-op or an equal-maths fallback on a CPU (CI has no GPU).

- `adamw`: the fused AdamW kernel on CUDA (one launch for all parameters instead of several per tensor); the same
  update as the plain one within float rounding.
- `compile_decoder_layers`: regional compilation. Compiling a whole causal LM recompiles whenever the padded batch
  length or a Python number in the Trainer's call changes (measured on an H200: 15 SFT steps took 218 s, 23× slower
  than eager). Compiling each decoder layer with dynamic shapes compiles one graph, reused by every layer (same
  code, same shapes) and every batch length; the embedding, the loss and the Trainer's bookkeeping stay eager.
- `response_log_probs`: Σ log π(token) over the scored tokens of each row without the [rows, length, vocabulary]
  logits. Only the scored positions go through the output layer, a few thousand at a time (`LinearLogProbs`): each
  chunk's logits live only inside one forward or backward step, and the backward recomputes them instead of keeping
  them (49k-vocabulary fp32 logits of a 64-pair DPO batch are ~13 GB, and their log-softmax as much again). On CUDA
  the log-softmax of a chunk and its gradient are each one compiled kernel reading the bf16 logits, instead of an
  fp32 copy, a log-sum-exp and a gather written out one after the other (measured on an H200: that chain was 58 of
  137 ms of a DPO step's kernels). Same sums and gradients as `log_softmax(logits).gather` within float rounding.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

LOG_PROB_CHUNK_TOKENS = (
    4096  # scored positions per output-layer chunk: ~0.8 GB of fp32 logits at a 49k vocabulary
)


def adamw(parameters, device, **options) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameters, fused=torch.device(device).type == "cuda", **options)


def trainer_optimizer_name(device) -> str:
    """The `optim` of a transformers Trainer that matches `adamw`."""
    return "adamw_torch_fused" if torch.device(device).type == "cuda" else "adamw_torch"


def to_device(tensors: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """CPU-built batch tensors on `device`. To a GPU through pinned memory without blocking: a copy from pageable
    memory waits for every kernel already queued, a host sync per batch."""
    if torch.device(device).type != "cuda":
        return {key: value.to(device) for key, value in tensors.items()}
    return {key: value.pin_memory().to(device, non_blocking=True) for key, value in tensors.items()}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated transformer blocks of a causal LM or a sequence classifier, under PEFT wrappers too."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(inner, "base_model_prefix", "model")
    layers = getattr(getattr(inner, prefix, None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"{type(inner).__name__} has no `{prefix}.layers` to compile")
    return layers


def compile_decoder_layers(
    model: nn.Module, backend: str = "inductor", dynamic: bool = True, mode: str | None = None
) -> int:
    """Compile every decoder layer in place (dynamic shapes unless told; `mode` as torch.compile's); returns how
    many. Call once, after PEFT wrapping."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(backend=backend, dynamic=dynamic, mode=mode)
    return len(layers)


def use_compiled_layers(config, device) -> bool:
    """Stages compile their layers on CUDA when the config asks (inductor needs a GPU to pay off)."""
    return bool(getattr(config, "compile", False)) and torch.device(device).type == "cuda"


def _causal_lm(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _plain_output_layer(model: nn.Module) -> nn.Linear | None:
    """The output projection when logits are exactly `hidden @ W.T` (no bias, no soft-capping, no wrapper)."""
    inner = _causal_lm(model)
    head = inner.get_output_embeddings()
    config = getattr(inner, "config", None)
    if (
        type(head) is not nn.Linear
        or head.bias is not None
        or getattr(config, "final_logit_softcapping", None)
    ):
        return None
    if not isinstance(getattr(inner, getattr(inner, "base_model_prefix", ""), None), nn.Module):
        return None
    return head


def _target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log softmax(logits)[target], logsumexp(logits)) per row, in fp32."""
    logits = logits.float()
    log_normaliser = logits.logsumexp(-1)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_normaliser, log_normaliser


def _target_log_prob_gradients(
    logits: torch.Tensor, targets: torch.Tensor, log_normaliser: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """d(grad · log softmax(logits)[target]) / d logits = grad · (onehot(target) − softmax(logits)), in the logits'
    dtype. The one-hot is a comparison with the column index, so the whole expression is one pointwise kernel."""
    probabilities = (logits.float() - log_normaliser.unsqueeze(-1)).exp()
    columns = torch.arange(logits.shape[-1], device=logits.device)
    is_target = (columns.unsqueeze(0) == targets.unsqueeze(-1)).float()
    return (grad.unsqueeze(-1) * (is_target - probabilities)).to(logits.dtype)


@functools.cache
def _log_prob_kernels(device_type: str):
    """The two pointwise pieces of `LinearLogProbs`, compiled into fused kernels on CUDA (eager elsewhere)."""
    if device_type != "cuda":
        return _target_log_probs, _target_log_prob_gradients
    return (
        torch.compile(_target_log_probs, dynamic=True),
        torch.compile(_target_log_prob_gradients, dynamic=True),
    )


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return hidden @ weight.t()


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


class LinearLogProbs(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[target] for each row of `hidden`, `chunk_tokens` rows at a time.

    Autocast does not reach a custom backward, so the dtype the forward computed in (autocast's, or the inputs') is
    fixed explicitly and reused when the backward recomputes the chunk's logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens: int):
        dtype = _compute_dtype(hidden)
        log_probs_of, _ = _log_prob_kernels(hidden.device.type)
        with torch.autocast(hidden.device.type, enabled=False):
            hidden_c, weight_c = hidden.to(dtype), weight.to(dtype)
            log_probs = hidden.new_empty(len(hidden), dtype=torch.float32)
            log_normaliser = torch.empty_like(log_probs)
            for start in range(0, len(hidden), chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                log_probs[rows], log_normaliser[rows] = log_probs_of(
                    _chunk_logits(hidden_c[rows], weight_c), targets[rows]
                )
        ctx.save_for_backward(hidden, weight, targets, log_normaliser)
        ctx.dtype, ctx.chunk_tokens = dtype, chunk_tokens
        return log_probs

    @staticmethod
    def backward(ctx, grad_log_probs):
        hidden, weight, targets, log_normaliser = ctx.saved_tensors
        _, gradients_of = _log_prob_kernels(hidden.device.type)
        needs_hidden, needs_weight = ctx.needs_input_grad[:2]
        hidden_c, weight_c = hidden.to(ctx.dtype), weight.to(ctx.dtype)
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_weight else None
        for start in range(0, len(hidden), ctx.chunk_tokens):
            rows = slice(start, start + ctx.chunk_tokens)
            grad_logits = gradients_of(
                _chunk_logits(hidden_c[rows], weight_c),
                targets[rows],
                log_normaliser[rows],
                grad_log_probs[rows].float(),
            )
            if grad_hidden is not None:
                grad_hidden[rows] = grad_logits @ weight_c
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ hidden_c[rows]).float()
        return (
            grad_hidden,
            grad_weight.to(weight.dtype) if grad_weight is not None else None,
            None,
            None,
        )


def response_log_probs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scored_mask: torch.Tensor,
    chunk_tokens: int = LOG_PROB_CHUNK_TOKENS,
    scored_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ log π(x_t | x_<t), number of scored tokens) per row, over the positions t where `scored_mask` is 1.

    `scored_positions`, when the caller has it, is `scored_positions_of(scored_mask)` computed where the mask was
    built (on the CPU, before the copy): finding the positions on the GPU would be a host sync per pass.
    Models whose logits are not a plain projection of the last hidden state fall back to full logits."""
    targets = input_ids[:, 1:]
    mask = scored_mask[:, 1:].bool()
    counts = mask.sum(-1)
    head = _plain_output_layer(model)
    if head is None:
        logits = (
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
        )
        token_log_probs = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (token_log_probs * mask).sum(-1), counts
    # A sharded model (FSDP) gathers its embeddings, final norm and output layer only in a forward of its root,
    # which this pass bypasses (it calls the decoder and then the output layer): it runs as one.
    from training.engine import sharding

    return sharding.in_root_forward(
        model, _scored_log_probs, model, head, input_ids, attention_mask, mask, chunk_tokens, scored_positions
    ), counts


def scored_positions_of(scored_mask: torch.Tensor) -> torch.Tensor:
    """Flat indices, into the [rows, length − 1] grid of predicted tokens, of the positions `response_log_probs`
    scores (x_t for t ≥ 1 where the mask is 1)."""
    return scored_mask[:, 1:].flatten().nonzero().squeeze(-1)


def _scored_log_probs(
    model: nn.Module,
    head: nn.Linear,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    mask: torch.Tensor,
    chunk_tokens: int,
    scored_positions: torch.Tensor | None,
) -> torch.Tensor:
    inner = _causal_lm(model)
    decoder = getattr(inner, inner.base_model_prefix)
    # use_cache=False: a scoring pass keeps no KV cache (with one, every layer would also copy its keys and values
    # into it, and compiled layers would recompile once per layer index on the cache's state)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    if scored_positions is None:
        scored_positions = mask.flatten().nonzero().squeeze(-1)  # a host sync: the count sizes what follows
    length = input_ids.shape[1]
    rows = torch.div(scored_positions, length - 1, rounding_mode="floor")
    # position t − 1 of a row predicts token t; index the contiguous [rows · length] layout (no copies)
    predicting = scored_positions + rows
    token_log_probs = LinearLogProbs.apply(
        hidden.flatten(0, 1).index_select(0, predicting),
        head.weight,
        input_ids.flatten().index_select(0, predicting + 1),
        chunk_tokens,
    )
    sums = torch.zeros(len(input_ids), dtype=torch.float32, device=input_ids.device)
    return sums.index_add(0, rows, token_log_probs)
