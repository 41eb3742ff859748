"""The stages that run on several processes, as torch.distributed jobs on this machine's GPUs, against the same
stage in this process.

    python benchmarks/gpu_distributed.py --model-dir DIR --out results.json [--processes N] [--steps 12]
        [--only sft,reward,contrastive,ppo] [--shardings ddp,fsdp]

N defaults to every GPU this machine sees. Each stage runs once in this process (`processes` 1, what `stages.run`
does on a one-GPU worker), then through `launcher.run_distributed` on N processes, once per sharding: torchrun's
child processes, one GPU each, an NCCL process group, progress and the result through the job folder. With N = 1
the job has one rank (`stages.run` launches a job only for N > 1; the launcher is called directly so that its CUDA
path — rank → GPU binding, NCCL, the job folder — runs on a one-GPU machine too) and FSDP is left out (one rank holds
the whole model). Per run: the step losses (same global batch, so the N-process losses follow the one-process
ones; compiled kernels and NCCL's reduction order make them differ within bf16 noise; PPO's ranks sample their
share of the rollouts with their own seed, so its losses compare between shardings, not with one process's), tokens/s over the steps between the first and the last report (the launcher forwards reports every `poll_s`, so a job's window is
±0.2 s), the scaling against one process, and the job's wall time including torchrun's start and model loading.
DIR and the random weights: as in gpu_stages.py. Writes one JSON object after every run and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from gpu_stages import (  # noqa: E402
    StepClock,
    build_random_model,
    conversations,
    tokens_per_row,
    tolerate_unpicklable_fingerprints,
)

from training.engine.common import ModelRef, PeftSettings, StepMetrics  # noqa: E402


class LossClock(StepClock):
    """`StepClock` that keeps each report's loss too."""

    def __init__(self):
        super().__init__()
        self.losses: list[float] = []

    def __call__(self, metrics) -> None:
        if isinstance(metrics, StepMetrics):
            super().__call__(metrics)
            loss = metrics.values.get("loss", metrics.values.get("policy_loss"))  # PPO: its policy's loss
            if loss is not None:
                self.losses.append(float(loss))


def stage_configs(steps: int, processes: int, sizes: dict) -> dict:
    from training.engine.contrastive import ContrastiveStageConfig
    from training.engine.ppo import PPOConfig
    from training.engine.reward_model import RewardStageConfig
    from training.engine.sft import SftStageConfig

    common = {"max_steps": steps, "max_length": sizes["max_length"], "checkpoint_every": 0, "log_every": 1}
    return {
        "sft": (SftStageConfig(batch_size=sizes["rows"], learning_rate=1e-4, **common), ("chosen",)),
        "reward": (
            RewardStageConfig(batch_size=sizes["pairs"], learning_rate=1e-5, held_out_fraction=0.0, **common),
            ("chosen", "rejected"),
        ),
        "contrastive": (
            ContrastiveStageConfig(
                batch_size=sizes["pairs"], learning_rate=1e-6, peft=PeftSettings(method="full"), **common
            ),
            ("chosen", "rejected"),
        ),
        "ppo": (
            PPOConfig(
                max_steps=3,
                batch_size=sizes["prompts"],
                mini_batch_size=sizes["prompts"] // 4,
                ppo_epochs=2,
                max_new_tokens=sizes["new"],
                max_length=sizes["max_length"],
                learning_rate=1e-6,
                checkpoint_every=0,
                reward_source="rules",
                peft=PeftSettings(method="lora"),
                rules=[{"kind": "length", "target": 200, "tolerance": 150, "unit": "chars"}],
            ),  # fmt: skip
            None,
        ),
    }


def stage_data(kind: str, rows: list[dict]) -> Dataset:
    if kind == "sft":
        return Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
    if kind == "ppo":
        return Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    return Dataset.from_list(rows)


def run_once(kind: str, config, data: Dataset, base: ModelRef, out: Path, processes: int) -> dict:
    """One run of the stage: in this process when `processes` is None, else a job of that many processes."""
    from training.engine import launcher, stages
    from training.engine.common import StageInputs

    clock = LossClock()
    inputs = StageInputs(data, base, out, clock)
    start = time.perf_counter()
    if processes is None:
        result = stages.run(config, inputs)
    else:
        result = launcher.run_distributed(config, inputs, launcher.LaunchSettings(poll_s=0.05))
    entry = {
        "status": result.status,
        "wall_s": time.perf_counter() - start,
        "steps_per_s": clock.steps_per_s(),
        "losses": clock.losses,
        "seconds_between_reports": clock.seconds_between_reports(),
    }
    if result.status != "completed" or not result.artifact_path:
        entry["error"] = f"{result.status}: {result.metrics}"
    return entry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--processes", type=int, default=torch.cuda.device_count() or 2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--only", default="sft,reward,contrastive,ppo")
    parser.add_argument("--shardings", default="ddp,fsdp")
    parser.add_argument(
        "--smoke", action="store_true", help="Tiny sizes on the CPU (gloo): checks the script."
    )
    args = parser.parse_args()
    tolerate_unpicklable_fingerprints()
    from transformers import AutoTokenizer

    from training.engine.stages import stage_spec

    work = Path(tempfile.mkdtemp())
    model_path, parameters = build_random_model(args.model_dir, work / "smollm2-135m-random")
    base = ModelRef(model_path, "smollm2-135m-random")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = conversations(256 if args.smoke else 2048)
    sizes = (
        {"rows": 4, "pairs": 2, "prompts": 8, "new": 8, "max_length": 320}
        if args.smoke
        else {"rows": 64, "pairs": 32, "prompts": 64, "new": 64, "max_length": 512}
    )
    processes = args.processes
    results: dict = {"devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or "cpu",
                     "torch": torch.__version__, "parameters": parameters, "processes": processes,
                     "steps": args.steps, "sizes": sizes}  # fmt: skip

    def record(name: str, value) -> None:
        results[name] = value
        args.out.write_text(json.dumps(results, indent=2))
        print(json.dumps({name: value}), flush=True)

    shardings = ["ddp"] if processes == 1 else args.shardings.split(",")
    for kind, (config, columns) in stage_configs(args.steps, processes, sizes).items():
        if kind not in args.only.split(","):
            continue
        if args.smoke:
            config.device = "cpu"
        data = stage_data(kind, rows)
        per_step = (
            config.batch_size * tokens_per_row(tokenizer, rows, columns, config.max_length)
            if columns
            else None
        )
        entry: dict = {"batch": config.batch_size}
        runs = {"one_process": None} | {f"{processes}_processes_{mode}": mode for mode in shardings}
        for name, sharding in runs.items():
            if sharding == "fsdp" and not stage_spec(kind).shards:
                continue
            try:
                if sharding is not None:
                    config.processes, config.sharding = processes, sharding if processes > 1 else "auto"
                else:
                    config.processes, config.sharding = 1, "auto"
                run = run_once(
                    kind, config, data, base, work / f"{kind}-{name}", None if sharding is None else processes
                )
            except Exception as exc:  # one failing run must not hide the others' numbers
                run = {"error": repr(exc), "where": traceback.format_exc()[-3000:]}
            if per_step and "steps_per_s" in run:
                run["tokens_per_s"] = run["steps_per_s"] * per_step
            entry[name] = run
        single = entry.get("one_process", {})
        for name, run in entry.items():
            if isinstance(run, dict) and name != "one_process" and run.get("losses") and single.get("losses"):
                pairs = list(zip(single["losses"], run["losses"], strict=False))
                run["loss_max_relative_difference"] = max(abs(a - b) / max(abs(a), 1e-6) for a, b in pairs)
                run["speedup_vs_one_process"] = run["steps_per_s"] / single["steps_per_s"]
        record(kind, entry)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
