"""Rollout throughput: new tokens/s of `training.engine.generation` vs plain HF `model.generate`, same process.

    .venv/bin/python benchmarks/generation_throughput.py                                   # tiny random model, CPU
    .venv/bin/python benchmarks/generation_throughput.py --model ../shared/baselines/smol --batch-size 256 \
        --new-tokens 128 --hf-cache-implementation static                                  # SmolLM2-135M on a GPU

--model is a model folder: with weights they are loaded; with only config.json + tokenizer (like
../shared/baselines/smol) the architecture is built with random weights, which do not change throughput.
Both sides sample (temperature 1, top-p 1) exactly --new-tokens tokens per row (end-of-sequence is ignored), from
the same left-padded prompts, after one warm-up call each; the best of --repeats timed calls counts.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = (
    "the model answers a question about data training reward policy human feedback ranking annotator response "
    "prompt quality helpful honest harmless clear short long explain why because however"
).split()


def load_model(model_path: str | None, device, dtype):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if model_path is None:
        from training.engine.base_model import build_tiny_model

        model, tokenizer = build_tiny_model(seed=0)
        return model.to(device=device, dtype=dtype).eval(), tokenizer, "tiny-random"
    folder = Path(model_path)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if (folder / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        label = folder.name
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)), dtype=dtype)
        label = f"{folder.name} (random weights)"
    return model.to(device).eval(), tokenizer, label


def timed(function, device, repeats: int) -> float:
    import torch

    function()  # warm-up: allocator, kernels, caches
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the tiny random test model)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--prompt-words", type=int, default=20, help="upper bound; prompts have 5..N words")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hf-cache-implementation", default=None, help='e.g. "static" (the design baseline)')
    arguments = parser.parse_args()

    import torch

    from training.engine.common import pick_device, training_dtype
    from training.engine.generation import (
        SamplingSettings,
        encode_prompts,
        pad_token_id,
        sample_completions,
    )

    device = pick_device(arguments.device)
    dtype = training_dtype(device)
    model, tokenizer, label = load_model(arguments.model, device, dtype)
    rng = random.Random(0)
    prompts = [
        [
            {
                "role": "user",
                "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, arguments.prompt_words))),
            }
        ]
        for _ in range(arguments.batch_size)
    ]
    settings = SamplingSettings(
        max_new_tokens=arguments.new_tokens, temperature=1.0, top_p=1.0, max_prompt_length=4096
    )
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, settings.max_prompt_length, device)
    generator = torch.Generator(device=device).manual_seed(0)
    pad = pad_token_id(tokenizer)

    def ours():
        # No stop ids: every row runs to new_tokens, like min_new_tokens on the HF side.
        completion_ids, _ = sample_completions(model, prompt_ids, prompt_mask, settings, [], pad, generator)
        assert completion_ids.shape == (arguments.batch_size, arguments.new_tokens)

    hf_options = {}
    if arguments.hf_cache_implementation:
        hf_options["cache_implementation"] = arguments.hf_cache_implementation

    def hugging_face():
        with torch.no_grad():
            output = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                do_sample=True,
                top_p=1.0,
                temperature=1.0,
                top_k=0,
                max_new_tokens=arguments.new_tokens,
                min_new_tokens=arguments.new_tokens,
                pad_token_id=pad,
                **hf_options,
            )
        assert output.shape[1] - prompt_ids.shape[1] == arguments.new_tokens

    new_tokens = arguments.batch_size * arguments.new_tokens
    ours_seconds = timed(ours, device, arguments.repeats)
    hf_seconds = timed(hugging_face, device, arguments.repeats)
    result = {
        "model": label,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "batch_size": arguments.batch_size,
        "new_tokens_per_row": arguments.new_tokens,
        "prompt_tokens_max": int(prompt_mask.sum(dim=1).max()),
        "hf_cache_implementation": arguments.hf_cache_implementation or "dynamic",
        "ours_new_tokens_per_s": round(new_tokens / ours_seconds, 1),
        "hf_generate_new_tokens_per_s": round(new_tokens / hf_seconds, 1),
        "ours_over_hf": round(hf_seconds / ours_seconds, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
