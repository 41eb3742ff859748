"""How the decode loop of `generation.py` runs the model: one cached forward for the prompt, then one per token.

Two ways to keep the KV cache, same results (greedy decoding gives the same tokens; tests/engine/test_generation.py):

- `DynamicCacheDecoder`: the cache grows by one column per token. Every step has new shapes, so it runs eagerly:
  for a small model that is ~40 ms of kernel launches and Python per step whatever the batch (launch-bound, the
  GPU mostly idle). Used on CPU, where it is the cheaper of the two.
- `StaticCacheDecoder`: the cache is allocated once at its final length (prompt + new tokens, rounded up) and
  written in place; the attention mask covers the whole cache from the start (columns not written yet are hidden
  by the causal mask, since the cache tracks its own length). Every decode step then has the same shapes and the
  same tensor addresses, so on CUDA `torch.compile(mode="reduce-overhead")` records the step as one CUDA graph
  and replays it: one launch per token instead of hundreds. The prefill (variable prompt length) runs eagerly into
  the same cache. The cache and the compiled step stay on the model between calls (PPO samples every iteration,
  the sampling service every batch), so a repeated shape neither recompiles nor re-records.

Decode steps of the static decoder attend with `packed_gqa_attention`: with grouped-query attention (SmolLM2: 9
query heads over 3 key/value heads) transformers' SDPA path copies each key/value head once per query head of its
group over the whole static cache when compiled (`repeat_kv`, twice per layer per token): measured on an H200 that
copy took as long as the attention itself. One query token per head lets the group's query heads be the rows of one
"query sequence" per key/value head instead, so attention reads the cache as it is (the same reshape transformers
itself uses when not compiling).
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
import torch.nn.functional as F

# Cache lengths are rounded up to this, so prompts of slightly different lengths share one compiled graph.
CACHE_LENGTH_MULTIPLE = 128
# Static caches kept per model (one per batch size × cache length); a sampling service with many shapes stays bounded.
MAX_KEPT_CACHES = 4
_STATE_ATTRIBUTE = "_feedback_static_decode"
PACKED_GQA_ATTENTION = "sdpa_packed_gqa"  # registered with transformers' attention and mask interfaces


def cache_keyword(model) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (the old name still works, with a warning)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(type(inner).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class DynamicCacheDecoder:
    def __init__(self, model, prompt_mask: torch.Tensor):
        self.model = model
        self.keyword = cache_keyword(model)
        self.attention_mask = prompt_mask
        self.cache = None

    def prefill(self, prompt_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Last-position logits [batch, vocab] of the prompt."""
        outputs = _forward(self.model, prompt_ids, position_ids, self.attention_mask, {}, logits_to_keep=1)
        self.cache = _returned_cache(outputs)
        return outputs.logits[:, -1, :]

    def step(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Logits [batch, vocab] after appending `tokens` [batch] at `position_ids` [batch, 1]."""
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones(len(tokens), 1)], dim=1
        )
        outputs = _forward(
            self.model, tokens.unsqueeze(1), position_ids, self.attention_mask, {self.keyword: self.cache}
        )
        self.cache = _returned_cache(outputs)
        return outputs.logits[:, -1, :]


def _returned_cache(outputs):
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else outputs.past_key_values


class StaticCacheDecoder:
    def __init__(self, model, prompt_mask: torch.Tensor, max_new_tokens: int, compiled: bool):
        batch_size, prompt_length = prompt_mask.shape
        self.model = model
        self.state = _kept_state(model, compiled)
        length = cache_length(prompt_length, max_new_tokens)
        self.cache = self.state.cache_for(model, batch_size, length)
        # One mask for the whole run: the prompt's padding hidden, every later column visible (the causal mask
        # hides those not written yet), so the step's inputs never change shape.
        self.attention_mask = torch.ones(
            (batch_size, length), dtype=prompt_mask.dtype, device=prompt_mask.device
        )
        self.attention_mask[:, :prompt_length] = prompt_mask

    def prefill(self, prompt_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        cache_argument = {self.state.keyword: self.cache}
        # Many query tokens: the packed attention would hand over to plain SDPA anyway, so the prefill keeps it.
        outputs = _forward(
            self.model, prompt_ids, position_ids, self.attention_mask, cache_argument, logits_to_keep=1
        )
        return outputs.logits[:, -1, :]

    def step(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        arguments = (
            self.model,
            tokens.unsqueeze(1),
            position_ids,
            self.attention_mask,
            self.cache,
            self.state.keyword,
        )
        with packed_gqa_decoding(self.model):
            if not self.state.compiled:
                return _one_token_step(*arguments)
            # The previous step's logits have been read: the graph may overwrite its output buffers now.
            torch.compiler.cudagraph_mark_step_begin()
            logits = self.state.compiled_step(*arguments)
        return logits.clone()  # the graph's output buffer is reused by the next replay


def cache_length(prompt_length: int, max_new_tokens: int) -> int:
    needed = prompt_length + max_new_tokens
    return -(-needed // CACHE_LENGTH_MULTIPLE) * CACHE_LENGTH_MULTIPLE


def _forward(model, input_ids, position_ids, attention_mask, cache_argument: dict, logits_to_keep: int = 0):
    # logits_to_keep=1 on a prompt: only the last column's logits are needed; skips a [batch, prompt, vocab] tensor
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=logits_to_keep,
        **cache_argument,
    )


def _one_token_step(model, input_ids, position_ids, attention_mask, cache, keyword: str) -> torch.Tensor:
    return _forward(model, input_ids, position_ids, attention_mask, {keyword: cache}).logits[:, -1, :]


class _KeptState:
    """What one model keeps between calls: its static caches by (batch, length), and the compiled step."""

    def __init__(self, model, compiled: bool):
        self.keyword = cache_keyword(model)
        self.compiled = compiled
        self.compiled_step = (
            torch.compile(_one_token_step, mode="reduce-overhead", dynamic=False) if compiled else None
        )
        self.caches: dict[tuple[int, int], object] = {}

    def cache_for(self, model, batch_size: int, length: int):
        # transformers loads where a model runs, not wherever sampling settings are imported
        from transformers import StaticCache

        cache = self.caches.get((batch_size, length))
        if cache is not None:
            cache.reset()
            return cache
        if len(self.caches) >= MAX_KEPT_CACHES:
            self.caches.clear()
        cache = self.caches[(batch_size, length)] = StaticCache(config=model.config, max_cache_len=length)
        return cache


def _kept_state(model, compiled: bool) -> _KeptState:
    state = getattr(model, _STATE_ATTRIBUTE, None)
    if state is None or state.compiled != compiled:
        state = _KeptState(model, compiled)
        object.__setattr__(model, _STATE_ATTRIBUTE, state)  # a plain attribute: no submodule, no parameter
    return state


def packed_gqa_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' SDPA attention, except one query token under grouped-query attention: [batch, heads, 1, dim]
    is regrouped to [batch, kv_heads, group, dim] (head h uses key/value head h // group, as in `repeat_kv`), so
    SDPA reads the cache without a per-query-head copy. A mask shared by all heads broadcasts over the group rows."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    mask_shared_by_heads = attention_mask is None or attention_mask.shape[1] == 1
    if (
        query.shape[2] != 1
        or groups == 1
        or not mask_shared_by_heads
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups, dim)
    output = F.scaled_dot_product_attention(
        packed, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
    )
    return output.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


@functools.cache  # once per process, not on every decode step
def _register_packed_gqa_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_GQA_ATTENTION, packed_gqa_attention)
    AttentionMaskInterface.register(PACKED_GQA_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def packed_gqa_decoding(model):
    """Decode steps of a model that attends with SDPA use `packed_gqa_attention`; other implementations as they are."""
    config = model.config
    if config._attn_implementation != "sdpa":
        yield
        return
    _register_packed_gqa_attention()
    config._attn_implementation = PACKED_GQA_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
