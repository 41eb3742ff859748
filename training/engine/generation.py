"""Batched sampling with a KV cache: used by PPO rollouts and by the sampling service.

Prompts are chat messages (or plain strings), rendered with the tokenizer's chat template and **left-padded**, so
every row's last prompt token sits in the same column and each decode step appends one column for the whole batch.
Position ids come from the attention mask, so a padded row sees exactly the positions it would see alone. How the
cache is kept (growing, or static with CUDA graphs on a GPU) is `decoders.py`'s business.

Our own loop instead of `model.generate`: it is a dozen lines, it lets PPO get token ids and masks without
post-processing, and it asks the device "is every row finished?" only once every `finished_check_every` tokens
(HF `generate` synchronises host and GPU after every token to evaluate its stopping criteria).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from training.engine import decoders
from training.engine.common import stop_if_asked

PromptInput = str | Sequence[dict]
DECODE_MODES = ("auto", "static", "dynamic")


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_p: float = 1.0  # nucleus sampling; 1.0 keeps the whole distribution
    max_prompt_length: int = 448  # longer prompts keep their end (the latest turns and the assistant header)
    finished_check_every: int = 8  # decode steps between host syncs that test "all rows ended"
    # "auto": a static cache with CUDA-graph decoding on CUDA (static_decode.py), the growing cache elsewhere;
    # "static" forces the static cache (uncompiled off CUDA), "dynamic" the growing one.
    decode: str = "auto"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0 (0 means greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_prompt_length < 1:
            raise ValueError("max_prompt_length must be at least 1")
        if self.finished_check_every < 1:
            raise ValueError("finished_check_every must be at least 1")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}")


@dataclass
class GeneratedBatch:
    """One batch of prompts and their sampled completions, ready for scoring and for PPO's forward passes.

    prompt_ids/prompt_mask: [batch, prompt_len], left-padded. completion_ids/completion_mask: [batch, new_len],
    right-padded; the mask covers the generated tokens up to and including the end-of-sequence token.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    ended_with_eos: torch.Tensor  # [batch] bool: False where the completion hit max_new_tokens
    texts: list[str]

    @property
    def sequence_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def sequence_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(dim=1)


def render_prompt(tokenizer, prompt: PromptInput) -> str:
    """Chat messages go through the chat template with the assistant header appended; strings pass through."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)


def encode_prompts(
    tokenizer, prompts: Sequence[PromptInput], max_prompt_length: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask; over-long prompts are cut from the left."""
    if len(prompts) == 0:
        raise ValueError("no prompts to encode")
    # The chat template already contains the special tokens, so the tokenizer must not add another BOS.
    encoded = [
        tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        for prompt in prompts
    ]
    encoded = [ids[-max_prompt_length:] for ids in encoded]
    width = max(len(ids) for ids in encoded)
    pad = pad_token_id(tokenizer)
    prompt_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        if ids:
            prompt_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            prompt_mask[row, width - len(ids) :] = 1
    return prompt_ids.to(device), prompt_mask.to(device)


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus whatever the model's generation config lists (chat models often have several)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    ids.discard(None)
    if not ids:
        raise ValueError("the tokenizer has no end-of-sequence token; completions could never end")
    return sorted(ids)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (pad columns get 0; they are masked anyway)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def completion_mask_from_ids(completion_ids: torch.Tensor, stop_ids: torch.Tensor) -> torch.Tensor:
    """1 for every token up to and including the first stop token of its row, 0 after it."""
    is_stop = torch.isin(completion_ids, stop_ids).long()
    stops_before = is_stop.cumsum(dim=1) - is_stop
    return (stops_before == 0).long()


def pick_next_tokens(
    logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None
) -> torch.Tensor:
    """Greedy when temperature is 0, else temperature + nucleus (top-p) sampling. logits: [batch, vocab]."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / settings.temperature
    if settings.top_p < 1.0:
        sorted_logits, sorted_index = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token once the tokens ranked above it already hold top_p of the mass; the top one always stays.
        mass_above = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_logits = sorted_logits.masked_fill(mass_above > settings.top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_index, sorted_logits)
    # Inverse-CDF sampling: one uniform number per row and a binary search in the cumulative distribution. Over a
    # 49k vocabulary this costs about one softmax, where torch.multinomial costs five (measured on CPU).
    # right=True never lands on a zero-probability (top-p-filtered) token: its cumulative value equals its left
    # neighbour's, so "first cumulative value > u" skips it.
    cumulative = logits.softmax(dim=-1).cumsum(dim=-1)
    uniform = torch.rand(cumulative.shape[0], 1, device=cumulative.device, generator=generator)
    draws = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True)
    return draws.squeeze(1).clamp(max=cumulative.shape[-1] - 1)


@torch.no_grad()
def sample_completions(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    settings: SamplingSettings,
    stop_ids: Sequence[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    should_stop: Callable[[], bool] | None = None,
    all_finished: Callable[[torch.Tensor], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decode loop on tensors: prefill the prompt once, then one cached forward per new token.

    `should_stop` (PPO's cancel) is asked before every forward pass; a True raises StageCancelled at once.
    `all_finished(finished)` decides, every `finished_check_every` steps, whether decoding may end early (by
    default: every row has ended). PPO on several processes makes it agree over the ranks, so that every rank
    takes as many decode steps and asks its (collective) `should_stop` as often.
    no_grad rather than inference_mode: PPO feeds these ids into forward passes that need autograd, and
    inference-mode tensors cannot be saved for backward.
    """
    batch_size = prompt_ids.shape[0]
    device = prompt_ids.device
    stop_ids_tensor = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    all_finished = all_finished or (lambda finished: bool(finished.all()))
    decoder = _decoder(model, prompt_mask, settings)

    stop_if_asked(should_stop)
    logits = decoder.prefill(prompt_ids, positions_from_mask(prompt_mask))
    next_positions = prompt_mask.sum(dim=1, keepdim=True)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    new_tokens = torch.full((batch_size, settings.max_new_tokens), pad_id, dtype=torch.long, device=device)
    steps_taken = settings.max_new_tokens
    for step in range(settings.max_new_tokens):
        next_tokens = pick_next_tokens(logits, settings, generator)
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_id), next_tokens)
        new_tokens[:, step] = next_tokens
        finished = finished | torch.isin(next_tokens, stop_ids_tensor)
        if step == settings.max_new_tokens - 1:
            break
        if (step + 1) % settings.finished_check_every == 0 and all_finished(finished):
            steps_taken = step + 1
            break
        stop_if_asked(should_stop)
        logits = decoder.step(next_tokens, next_positions)
        next_positions = next_positions + 1
    completion_ids = new_tokens[:, :steps_taken]
    return completion_ids, completion_mask_from_ids(completion_ids, stop_ids_tensor)


def _decoder(model, prompt_mask: torch.Tensor, settings: SamplingSettings):
    on_cuda = prompt_mask.device.type == "cuda"
    if settings.decode == "static" or (settings.decode == "auto" and on_cuda):
        return decoders.StaticCacheDecoder(model, prompt_mask, settings.max_new_tokens, compiled=on_cuda)
    return decoders.DynamicCacheDecoder(model, prompt_mask)


def generate(
    model,
    tokenizer,
    prompts: Sequence[PromptInput],
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    should_stop: Callable[[], bool] | None = None,
    all_finished: Callable[[torch.Tensor], bool] | None = None,
) -> GeneratedBatch:
    """Sample one completion per prompt. `generator` (on the model's device) makes sampling reproducible;
    `should_stop`, asked before each decode step, cancels the generation (StageCancelled); `all_finished`: see
    `sample_completions`."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, settings.max_prompt_length, device)
    stop_ids = stop_token_ids(model, tokenizer)
    completion_ids, completion_mask = sample_completions(
        model,
        prompt_ids,
        prompt_mask,
        settings,
        stop_ids,
        pad_token_id(tokenizer),
        generator,
        should_stop,
        all_finished,
    )
    lengths = completion_mask.sum(dim=1)
    ids_on_host = completion_ids.tolist()
    texts = tokenizer.batch_decode(
        [row[:length] for row, length in zip(ids_on_host, lengths.tolist(), strict=True)],
        skip_special_tokens=True,
    )
    last_tokens = completion_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    ended_with_eos = torch.isin(last_tokens, torch.tensor(stop_ids, device=device)) & (lengths > 0)
    return GeneratedBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, ended_with_eos, texts)
