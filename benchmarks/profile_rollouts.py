"""Where a rollout's time goes: one profiled `generate` call of the sampling service's path on a GPU.

    python benchmarks/profile_rollouts.py --model-dir DIR [--batch 256] [--new-tokens 128]

Prints JSON: wall time per decode step, the GPU kernel time per step (sum of CUDA kernel durations), and the top
kernels and CPU-side operators, after a warm-up call of the same shape (compilation and graph capture left out).
When GPU time per step is far below wall time per step, the decode loop is launch- or host-bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from gpu_stages import DEVICE, build_random_model, conversations, synchronize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.engine.generation import SamplingSettings, generate

    model_path, _ = build_random_model(args.model_dir, Path(tempfile.mkdtemp()) / "random", "135m")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(DEVICE).eval()
    prompts = [row["prompt"] for row in conversations(args.batch)]
    settings = SamplingSettings(max_new_tokens=args.new_tokens, temperature=1.0)
    with torch.no_grad():
        generate(model, tokenizer, prompts, settings)  # warm-up: compile and capture
        synchronize()
        start = time.perf_counter()
        generate(model, tokenizer, prompts, settings)
        synchronize()
        unprofiled = time.perf_counter() - start
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
        with profile(activities=activities) as prof:
            generate(model, tokenizer, prompts, settings)
            synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    steps = args.new_tokens
    top_gpu = sorted(events, key=lambda e: -e.device_time_total)[: args.top]
    top_cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
    print(json.dumps({
        "batch": args.batch, "new_tokens": steps, "seconds": unprofiled,
        "new_tokens_per_s": args.batch * steps / unprofiled, "wall_ms_per_step": 1000 * unprofiled / steps,
        "gpu_kernel_ms_per_step": kernel_us / 1000 / steps,
        "top_gpu": [[e.key[:80], round(e.device_time_total / 1000 / steps, 4), e.count] for e in top_gpu],
        "top_cpu_self": [[e.key[:80], round(e.self_cpu_time_total / 1000 / steps, 4), e.count] for e in top_cpu],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
