"""Batched generation: left padding changes nothing, completions stop at end-of-sequence, sampling is seeded."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from training.engine.generation import (
    SamplingSettings,
    completion_mask_from_ids,
    encode_prompts,
    generate,
    pick_next_tokens,
)

PROMPTS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {
            "role": "user",
            "content": "A much longer question, about the weather tomorrow in three different cities?",
        }
    ],
    "plain text prompt without a template",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from training.engine.base_model import load_saved_model

    return load_saved_model(tiny_model_dir)


def test_prompts_are_left_padded(tiny):
    _, tokenizer = tiny
    prompt_ids, prompt_mask = encode_prompts(tokenizer, PROMPTS, max_prompt_length=512, device="cpu")
    lengths = prompt_mask.sum(dim=1)
    assert len(set(lengths.tolist())) == 3  # three different lengths, so padding is really exercised
    assert (prompt_mask[:, -1] == 1).all()  # every prompt ends in the last column
    shortest = int(lengths.argmin())
    assert prompt_mask[shortest, 0] == 0
    truncated_ids, _ = encode_prompts(tokenizer, PROMPTS, max_prompt_length=5, device="cpu")
    assert truncated_ids.shape[1] == 5
    assert truncated_ids[0].tolist() == prompt_ids[0, -5:].tolist()  # cut from the left: the end is kept


def test_batched_greedy_matches_each_prompt_alone_and_hf_generate(tiny):
    model, tokenizer = tiny
    settings = SamplingSettings(max_new_tokens=12, temperature=0)
    batch = generate(model, tokenizer, PROMPTS, settings)

    assert batch.completion_ids.shape == (3, 12)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, tokenizer, [prompt], settings)
        assert alone.completion_ids[0].tolist() == batch.completion_ids[row].tolist()
        assert alone.texts[0] == batch.texts[row]

    reference = model.generate(
        input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, max_new_tokens=12, do_sample=False
    )
    assert reference[:, batch.prompt_ids.shape[1] :].tolist() == batch.completion_ids.tolist()


def test_generation_stops_at_end_of_sequence_and_masks_what_follows(tiny):
    model, tokenizer = tiny
    greedy = SamplingSettings(max_new_tokens=10, temperature=0, finished_check_every=1)
    first_token_of_chat_prompt = generate(model, tokenizer, PROMPTS[:1], greedy).completion_ids[0, 0].item()
    plain = generate(model, tokenizer, PROMPTS[2:], greedy).completion_ids[0].tolist()
    assert first_token_of_chat_prompt not in plain  # so only the chat prompt's row can stop early

    # Declare that token an end-of-sequence token, as chat models list several in their generation config.
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first_token_of_chat_prompt]
    try:
        batch = generate(model, tokenizer, [PROMPTS[0], PROMPTS[2]], greedy)
        alone = generate(model, tokenizer, PROMPTS[:1], greedy)
    finally:
        model.generation_config.eos_token_id = original

    assert (
        batch.completion_mask[0].tolist() == [1] + [0] * 9
    )  # the stop token itself is part of the completion
    assert batch.completion_ids[0, 1:].eq(tokenizer.pad_token_id).all()
    assert batch.ended_with_eos.tolist() == [True, False]
    assert batch.completion_mask[1].sum() == 10  # the other row ran to max_new_tokens
    # A batch whose rows all ended stops decoding early instead of running to max_new_tokens.
    assert alone.completion_ids.shape == (1, 1)


def test_completion_mask_covers_tokens_up_to_the_first_stop():
    eos = 2
    ids = torch.tensor([[5, 6, eos, 2, 2], [eos, 9, 9, 9, 9], [7, 7, 7, 7, 7]])
    mask = completion_mask_from_ids(ids, torch.tensor([eos]))
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_sampling_is_reproducible_with_a_seeded_generator_and_top_p_near_zero_is_greedy(tiny):
    model, tokenizer = tiny
    sampled = SamplingSettings(max_new_tokens=8, temperature=1.0, top_p=0.9)
    first = generate(model, tokenizer, PROMPTS, sampled, torch.Generator().manual_seed(7))
    second = generate(model, tokenizer, PROMPTS, sampled, torch.Generator().manual_seed(7))
    other = generate(model, tokenizer, PROMPTS, sampled, torch.Generator().manual_seed(8))
    assert first.completion_ids.tolist() == second.completion_ids.tolist()
    assert first.completion_ids.tolist() != other.completion_ids.tolist()

    greedy = generate(model, tokenizer, PROMPTS, SamplingSettings(max_new_tokens=8, temperature=0))
    nucleus_of_one = generate(
        model,
        tokenizer,
        PROMPTS,
        SamplingSettings(max_new_tokens=8, top_p=1e-6),
        torch.Generator().manual_seed(7),
    )
    assert nucleus_of_one.completion_ids.tolist() == greedy.completion_ids.tolist()


def test_sampling_follows_the_temperature_and_top_p_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf")]]).repeat(100_000, 1)
    generator = torch.Generator().manual_seed(0)
    drawn = pick_next_tokens(logits, SamplingSettings(), generator)
    frequencies = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert frequencies.tolist() == pytest.approx(logits[0].softmax(dim=0).tolist(), abs=0.01)

    hot = pick_next_tokens(logits, SamplingSettings(temperature=2.0), generator)
    hot_frequencies = torch.bincount(hot, minlength=4).float() / len(hot)
    assert hot_frequencies.tolist() == pytest.approx((logits[0] / 2).softmax(dim=0).tolist(), abs=0.01)

    # Probabilities 0.665, 0.245, 0.090: the top two hold 0.91 ≥ 0.7, so the third is cut and the rest renormalised.
    nucleus = pick_next_tokens(logits, SamplingSettings(top_p=0.7), generator)
    nucleus_frequencies = torch.bincount(nucleus, minlength=4).float() / len(nucleus)
    kept = logits[0, :3].softmax(dim=0)[1:]
    assert nucleus_frequencies.tolist() == pytest.approx([0.0, *(kept / kept.sum()).tolist(), 0.0], abs=0.01)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("temperature", -1.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("finished_check_every", 0),
        ("decode", "fast"),
    ],
)
def test_sampling_settings_reject_nonsense(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingSettings(**{field: value})


def test_static_cache_decoding_gives_the_dynamic_cache_tokens(tiny):
    """The GPU fast path (static cache, CUDA graphs on CUDA) is the same function: greedy tokens match exactly,
    seeded sampling draws the same tokens, and a second call reusing the kept cache is not polluted by the first."""
    model, tokenizer = tiny
    for settings, seed in [
        (SamplingSettings(max_new_tokens=12, temperature=0), None),
        (SamplingSettings(max_new_tokens=12, temperature=1.0, top_p=0.9), 5),
    ]:
        batches = {}
        for decode in ("dynamic", "static", "static"):
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            chosen = dataclasses.replace(settings, decode=decode)
            batches.setdefault(decode, []).append(generate(model, tokenizer, PROMPTS, chosen, generator))
        dynamic = batches["dynamic"][0]
        assert dynamic.completion_mask.sum() > len(PROMPTS)  # real completions, not all stopped at once
        for static in batches["static"]:
            assert static.completion_ids.tolist() == dynamic.completion_ids.tolist()
            assert static.completion_mask.tolist() == dynamic.completion_mask.tolist()


def test_packed_gqa_attention_equals_sdpa_with_repeated_key_value_heads():
    """One query token per head regrouped per key/value head: the same output as transformers' SDPA path, which
    copies each key/value head once per query head of its group, with a padding mask shared by all heads."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from training.engine.decoders import packed_gqa_attention

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    batch, kv_heads, length, dim = 2, 2, 10, 8
    query = torch.randn(batch, kv_heads * 3, 1, dim)
    key, value = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[0, ..., :4] = False  # a left-padded row
    packed, _ = packed_gqa_attention(module, query, key, value, mask, scaling=0.3)
    plain, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert packed.shape == plain.shape == (batch, 1, kv_heads * 3, dim)
    torch.testing.assert_close(packed, plain)
    # A different key/value head per group: swapping the groups' caches must change the result.
    swapped, _ = packed_gqa_attention(module, query, key.flip(1), value.flip(1), mask, scaling=0.3)
    assert not torch.allclose(swapped, plain)


def test_static_decode_steps_attend_with_packed_gqa_and_restore_sdpa(tiny):
    from training.engine import decoders

    model, tokenizer = tiny
    calls = {"one_token": 0, "other": 0}
    original = decoders.packed_gqa_attention

    def counting(module, query, *args, **kwargs):
        calls["one_token" if query.shape[2] == 1 else "other"] += 1
        return original(module, query, *args, **kwargs)

    from transformers import AttentionInterface

    decoders._register_packed_gqa_attention()  # registered once per process: count behind it
    AttentionInterface.register(decoders.PACKED_GQA_ATTENTION, counting)
    assert model.config._attn_implementation == "sdpa"
    settings = SamplingSettings(max_new_tokens=5, temperature=0, decode="static")
    try:
        generate(model, tokenizer, PROMPTS, settings)
    finally:
        AttentionInterface.register(decoders.PACKED_GQA_ATTENTION, original)
    layers = model.config.num_hidden_layers
    assert calls == {"one_token": 4 * layers, "other": 0}  # every decode step after the prefill, no prefill
    assert model.config._attn_implementation == "sdpa"


def test_the_ppo_memory_plan_counts_the_static_cache_the_decoder_keeps(tiny_model_dir):
    """PPO's rollout cache stays on the policy between iterations: the launch's estimate of it is the element count
    of the cache the static decoder really keeps (2 bytes an element: bf16 on CUDA; fp32 here)."""
    from training.engine import decoders, memory
    from training.engine.base_model import load_saved_model

    model, tokenizer = load_saved_model(tiny_model_dir)  # its own copy: the kept cache stays with it
    generate(model, tokenizer, PROMPTS, SamplingSettings(max_new_tokens=5, temperature=0, decode="static"))
    kept = getattr(model, decoders._STATE_ATTRIBUTE).caches
    [(rows, length)] = kept
    elements = sum(
        tensor.numel() for layer in kept[(rows, length)].layers for tensor in (layer.keys, layer.values)
    )
    config = model.config.to_dict()
    shape = memory.ModelShape.from_config(config, model.num_parameters())
    assert shape.key_value_size < shape.hidden_size  # grouped-query attention, as SmolLM2's
    load = memory.StageLoad(
        "ppo", "full", 1, length - 7, "cuda", rollout_rows=rows, reward_model=False
    )  # the rollout's longest sequence, rounded up as the decoder rounds it
    estimate = memory.training_memory(shape, load, gradient_checkpointing=False)
    assert memory.DECODE_CACHE_MULTIPLE == decoders.CACHE_LENGTH_MULTIPLE
    assert estimate.decode_cache == 2 * elements > 0
    on_cpu = memory.training_memory(
        shape, memory.StageLoad(**{**load.__dict__, "device_kind": "cpu"}), gradient_checkpointing=False
    )
    assert on_cpu.decode_cache == 0  # the growing cache there, freed after each rollout
