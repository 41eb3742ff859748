"""Where a contrastive (DPO, LoRA mixture) step's time goes, and what the candidate levers change, on one GPU.

    python benchmarks/profile_contrastive.py --model-dir DIR [--pairs 64] [--steps 10] [--variants ...]

Each variant builds the stage's policy the way `contrastive.run` does and times whole optimizer steps of the
stage's own maths (`contrastive.batch_losses`, backward, fused AdamW) on the benchmark's synthetic pairs, each step
timed alone (so a recompilation shows as an outlier), after warm-up steps over every batch of the cycle:

- `checkpointed`: the output layer's log-probs as before 2026-12-03 (c): each chunk's logits in fp32, its log-sum-exp
  and gather written out one by one, the chunk recomputed in the backward by activation checkpointing
- `fused_eager_kernels`: `fast_paths.LinearLogProbs` with its two pointwise pieces left eager
- `fused_syncing`: `LinearLogProbs`, the scored positions found on the GPU in each pass (a host sync each)
- `fused`: the stage's path today (compiled pointwise pieces, scored positions found by `collate` on the CPU)
- `eager_layers`: `fused` with eager decoder layers (the `compile: false` stage)
- `batch_linear_lhs`: `fused` with inductor's pre-grad pass that batches linears reading the same input
- `skip_guards`: `fused`, dynamo's guards not evaluated after warm-up (`skip_guard_eval_unsafe`)
- `cudagraphs`: layers compiled for static widths (padded to 64) with `mode="reduce-overhead"` (CUDA graphs)
- `cpp_wrapper`: `fused` with inductor's C++ wrapper (kernels launched from C++, not from generated Python)

All but `eager_layers` compile the decoder layers with dynamic shapes, as the stage does on CUDA.

Prints JSON: per variant tokens/s (real tokens), median and max step time, graphs compiled, peak memory, and for
`--profile` variants the top GPU kernels of one step. `--stage-steps N` first profiles `contrastive.run` itself
(the step's collate, metrics and reports included) over its last N/2 steps: CPU ops, Python functions, GPU busy. Tokens/s here is comparable with gpu_stages.py's
contrastive figure (same rows, same batch) but not the same measurement (no progress reporting, no stage I/O).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
import torch._inductor.config  # noqa: E402
from datasets import Dataset  # noqa: E402
from gpu_stages import DEVICE, build_random_model, conversations, synchronize  # noqa: E402

from training.engine import contrastive, fast_paths  # noqa: E402
from training.engine.common import ModelRef, PeftSettings  # noqa: E402

VARIANTS = (
    "checkpointed",
    "fused_eager_kernels",
    "fused_syncing",
    "fused",
    "eager_layers",
    "batch_linear_lhs",
    "skip_guards",
    "cudagraphs",
    "cpp_wrapper",
)


def _checkpointed_chunk(weight, hidden, targets):
    logits = torch.nn.functional.linear(hidden, weight).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def _checkpointed_linear_log_probs(hidden, weight, targets, chunk_tokens):
    """The previous path, the baseline: same arguments and result as `LinearLogProbs.apply`."""
    pieces = [
        torch.utils.checkpoint.checkpoint(
            _checkpointed_chunk, weight, hidden[s : s + chunk_tokens], targets[s : s + chunk_tokens],
            use_reentrant=False,
        )
        for s in range(0, len(hidden), chunk_tokens)
    ]  # fmt: skip
    return torch.cat(pieces)


def measure(variant: str, base: ModelRef, rows: Dataset, pairs: int, steps: int, profile: bool) -> dict:
    torch._dynamo.reset()
    config = contrastive.ContrastiveStageConfig(
        batch_size=pairs, learning_rate=1e-6, peft=PeftSettings(method="lora"), max_length=512
    )
    torch.manual_seed(0)  # the same LoRA initialisation in every variant
    policy, tokenizer = contrastive.build_policy(config, base, [contrastive.NO_DOMAIN], DEVICE)
    examples = contrastive.tokenize_pairs(tokenizer, rows, config.max_length, [contrastive.NO_DOMAIN])
    saved_fusions = dict(torch._inductor.config.pre_grad_fusion_options)
    if (
        variant == "batch_linear_lhs"
    ):  # inductor batches the linears that read the same input (q/k/v, LoRA A's)
        torch._inductor.config.pre_grad_fusion_options = {"batch_linear_lhs": {}}
    torch._inductor.config.cpp_wrapper = variant == "cpp_wrapper"
    if variant == "cudagraphs":  # static widths (padded to 64) replayed as CUDA graphs, layer by layer
        fast_paths.compile_decoder_layers(policy.model, dynamic=False, mode="reduce-overhead")
    elif variant != "eager_layers":
        fast_paths.compile_decoder_layers(policy.model, dynamic=True)
    saved = fast_paths.LinearLogProbs.apply, fast_paths._log_prob_kernels
    if variant == "checkpointed":
        fast_paths.LinearLogProbs.apply = _checkpointed_linear_log_probs
    if variant == "fused_eager_kernels":
        fast_paths._log_prob_kernels = lambda device_type: (
            fast_paths._target_log_probs,
            fast_paths._target_log_prob_gradients,
        )
    trainable = policy.trainable()
    optimizer = fast_paths.adamw(list(trainable.values()), DEVICE, lr=config.learning_rate, weight_decay=0.0)
    batches = [
        contrastive.collate(
            examples[start : start + pairs],
            tokenizer.pad_token_id,
            DEVICE,
            64 if variant == "cudagraphs" else 1,
        )
        for start in range(0, pairs * 4, pairs)
    ]
    if variant == "fused_syncing":
        for batch in batches:
            del batch["scored_positions"]
    policy.model.train()

    def step(batch) -> tuple[torch.Tensor, torch.Tensor]:
        if variant == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)
        loss, router_loss, log_probs = contrastive.batch_losses(config, policy, batch, pairs, False)
        (loss + config.router_loss_weight * router_loss).backward()
        gradient_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainable.values()]))
        optimizer.step()
        return log_probs.detach().sum(), gradient_norm

    try:
        torch.cuda.reset_peak_memory_stats() if DEVICE == "cuda" else None
        # the same maths in every variant: the first step's summed policy log-probs and gradient norm
        first_log_probs, first_gradient_norm = (float(x) for x in step(batches[0]))
        start = time.perf_counter()
        for index in range(len(batches) * 2):  # warm-up: every batch shape once in training, twice over
            step(batches[index % len(batches)])
        synchronize()
        warm_up_s = time.perf_counter() - start
        if variant == "skip_guards":  # after warm-up: dynamo checks only which cached graph, not every guard
            torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
        seconds, tokens = [], 0
        for index in range(steps):
            batch = batches[index % len(batches)]
            start = time.perf_counter()
            step(batch)
            synchronize()
            seconds.append(time.perf_counter() - start)
            tokens += int(batch["attention_mask"].sum())
        result = {
            "tokens_per_s": tokens / sum(seconds),
            "median_step_s": statistics.median(seconds),
            "max_step_s": max(seconds),
            "warm_up_s": warm_up_s,
            "first_step_log_prob_sum": first_log_probs,
            "first_step_gradient_norm": first_gradient_norm,
            "widths": [int(b["input_ids"].shape[1]) for b in batches],
            "graphs": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else None,
        }
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as profiler

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
            with profiler(activities=activities) as prof:
                step(batches[0])
                synchronize()
            events = prof.key_averages()
            cuda = torch.autograd.DeviceType.CUDA
            kernel_us = sum(e.device_time_total for e in events if e.device_type == cuda)
            top = sorted(events, key=lambda e: -e.device_time_total)[:18]
            result["gpu_kernel_ms"] = kernel_us / 1000
            result["gpu_busy_fraction"] = kernel_us / 1e6 / result["median_step_s"]
            result["top_gpu"] = [[e.key[:90], round(e.device_time_total / 1000, 2), e.count] for e in top]
        return result
    finally:
        fast_paths.LinearLogProbs.apply, fast_paths._log_prob_kernels = saved
        torch._inductor.config.pre_grad_fusion_options = saved_fusions
        torch._inductor.config.cpp_wrapper = False
        torch.compiler.set_stance("default")


def profile_stage(base: ModelRef, rows: Dataset, pairs: int, steps: int) -> dict:
    """`contrastive.run` itself (collate, metrics, reports: what `measure` leaves out), profiled over its last
    `steps // 2` steps: wall time per step, GPU kernel time per step, the top CPU ops and Python functions."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    from training.engine.common import StageInputs

    config = contrastive.ContrastiveStageConfig(
        batch_size=pairs,
        learning_rate=1e-6,
        peft=PeftSettings(method="lora"),
        max_steps=steps,
        checkpoint_every=0,
    )
    first = steps - steps // 2
    window: dict = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])

    def on_progress(metrics) -> None:
        synchronize()
        if metrics.step == first:
            window["profiler"] = profiler(activities=activities)
            window["profiler"].__enter__()
            window["python"] = cProfile.Profile()
            window["python"].enable()
            window["start"] = time.perf_counter()
        elif metrics.step == steps:
            window["seconds"] = time.perf_counter() - window["start"]
            window["python"].disable()
            window["profiler"].__exit__(None, None, None)

    contrastive.run(config, StageInputs(rows, base, Path(tempfile.mkdtemp()) / "out", on_progress))
    measured = steps - first
    events = window["profiler"].key_averages()
    cuda = torch.autograd.DeviceType.CUDA
    kernel_s = sum(e.device_time_total for e in events if e.device_type == cuda) / 1e6
    python = io.StringIO()
    pstats.Stats(window["python"], stream=python).sort_stats("tottime").print_stats(25)
    return {
        "step_s": window["seconds"] / measured,
        "gpu_kernel_s_per_step": kernel_s / measured,
        "gpu_busy_fraction": kernel_s / window["seconds"],
        "top_cpu_self": [
            [e.key[:90], round(e.self_cpu_time_total / 1000 / measured, 2), e.count // measured]
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]
        ],
        "python_tottime": python.getvalue().splitlines()[:45],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--profile", default="checkpointed,fused", help="variants to profile one step of")
    parser.add_argument("--rows", type=int, default=0, help="pairs to tokenize (default: 4 batches)")
    parser.add_argument(
        "--stage-steps", type=int, default=0, help="also profile contrastive.run over N steps"
    )
    args = parser.parse_args()
    model_path, _ = build_random_model(args.model_dir, Path(tempfile.mkdtemp()) / "random", "135m")
    base = ModelRef(model_path, "random")
    if args.stage_steps:
        stage_rows = Dataset.from_list(conversations(max(args.rows, args.pairs * args.stage_steps)))
        print(json.dumps({"stage": profile_stage(base, stage_rows, args.pairs, args.stage_steps)}, indent=1))
    rows = Dataset.from_list(conversations(args.rows or args.pairs * 4))
    results = {}
    for variant in args.variants.split(","):
        try:
            results[variant] = measure(variant, base, rows, args.pairs, args.steps, variant in args.profile)
        except Exception as exc:  # one failing variant must not hide the others' numbers
            results[variant] = {"error": repr(exc)[:2000]}
        print(json.dumps({variant: results[variant]}), flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()  # the variant's model and optimizer are gone with `measure`'s frame
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
