"""The GPU levers every stage shares, each a no-op or an equal-maths fallback on a CPU (CI has no GPU).

- `adamw`: the fused AdamW kernel on CUDA (one launch for all parameters instead of several per tensor); the same
  update as the plain one within float rounding.
- `compile_decoder_layers`: regional compilation. Compiling a whole causal LM recompiles whenever the padded batch
  length or a Python number in the Trainer's call changes (measured on an H200: 15 SFT steps took 218 s, 23× slower
  than eager). Compiling each decoder layer with dynamic shapes compiles one graph, reused by every layer (same
  code, same shapes) and every batch length; the embedding, the loss and the Trainer's bookkeeping stay eager.
- `response_log_probs`: Σ log π(token) over the scored tokens of each row without the [rows, length, vocabulary]
  logits. Only the scored positions go through the output layer, a few thousand at a time, and each chunk's logits
  are recomputed in the backward pass instead of kept (49k-vocabulary fp32 logits of a 64-pair DPO batch are ~13 GB,
  and their log-softmax as much again). Same sums as `log_softmax(logits).gather` within float rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

LOG_PROB_CHUNK_TOKENS = (
    4096  # scored positions per output-layer chunk: ~0.8 GB of fp32 logits at a 49k vocabulary
)


def adamw(parameters, device, **options) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameters, fused=torch.device(device).type == "cuda", **options)


def trainer_optimizer_name(device) -> str:
    """The `optim` of a transformers Trainer that matches `adamw`."""
    return "adamw_torch_fused" if torch.device(device).type == "cuda" else "adamw_torch"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated transformer blocks of a causal LM or a sequence classifier, under PEFT wrappers too."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(inner, "base_model_prefix", "model")
    layers = getattr(getattr(inner, prefix, None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"{type(inner).__name__} has no `{prefix}.layers` to compile")
    return layers


def compile_decoder_layers(model: nn.Module, backend: str = "inductor", dynamic: bool = True) -> int:
    """Compile every decoder layer in place (dynamic shapes unless told); returns how many. Call once, after PEFT
    wrapping."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(backend=backend, dynamic=dynamic)
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


def _chunk_log_probs(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def response_log_probs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scored_mask: torch.Tensor,
    chunk_tokens: int = LOG_PROB_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ log π(x_t | x_<t), number of scored tokens) per row, over the positions t where `scored_mask` is 1.

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
        model, _scored_log_probs, model, head, input_ids, attention_mask, targets, mask, chunk_tokens
    ), counts


def _scored_log_probs(
    model: nn.Module,
    head: nn.Linear,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    targets: torch.Tensor,
    mask: torch.Tensor,
    chunk_tokens: int,
) -> torch.Tensor:
    inner = _causal_lm(model)
    decoder = getattr(inner, inner.base_model_prefix)
    # use_cache=False: a scoring pass keeps no KV cache (with one, every layer would also copy its keys and values
    # into it, and compiled layers would recompile once per layer index on the cache's state)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state[
        :, :-1
    ]
    rows = mask.nonzero()[:, 0]  # one host sync per forward: the number of scored positions sizes the chunks
    scored_hidden, scored_targets = hidden[mask], targets[mask]
    needs_grad = torch.is_grad_enabled() and (scored_hidden.requires_grad or head.weight.requires_grad)
    pieces = []
    for start in range(0, len(rows), chunk_tokens):
        piece = (
            head,
            scored_hidden[start : start + chunk_tokens],
            scored_targets[start : start + chunk_tokens],
        )
        pieces.append(
            checkpoint(_chunk_log_probs, *piece, use_reentrant=False)
            if needs_grad
            else _chunk_log_probs(*piece)
        )
    token_log_probs = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(len(input_ids), dtype=torch.float32, device=input_ids.device)
    return sums.index_add(0, rows, token_log_probs)
