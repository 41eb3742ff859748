"""Reward-model stage: learns a synthetic preference (held-out accuracy), pairs from rankings, cancel/resume/failure."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset

from training.engine import finetuning_methods, reward_model
from training.engine.common import ModelRef, PeftSettings, StageInputs
from training.engine.data import pairs_from_ranking, preference_pairs

WORDS = "apple river stone cloud green quick silver table moon paper garden yellow".split()


def keyword_preference(count: int, seed: int = 0) -> Dataset:
    """Chosen answers end in "great", rejected ones in "awful"; the rest of the text is shared random filler."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        filler = " ".join(rng.sample(WORDS, 3))
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Say something about {rng.choice(WORDS)}"}],
                "chosen": [{"role": "assistant", "content": f"{filler} great"}],
                "rejected": [{"role": "assistant", "content": f"{filler} awful"}],
            }
        )
    return Dataset.from_list(rows)


def config(**overrides) -> reward_model.RewardStageConfig:
    values = dict(
        max_steps=20,
        learning_rate=1e-3,
        batch_size=8,
        max_length=64,
        held_out_fraction=0.25,
        checkpoint_every=0,
        device="cpu",
    )
    values.update(overrides)
    return reward_model.RewardStageConfig(**values)


@pytest.mark.parametrize("method", ["full", "lora", "adapter"])
def test_reward_model_learns_preference_and_scores_after_reload(tiny_model_dir, tmp_path, method):
    data = keyword_preference(48)
    learning_rate = {"full": 1e-3, "lora": 5e-3, "adapter": 1e-2}[method]
    settings = PeftSettings(method=method, lora_r=8, adapter_bottleneck=16)
    progress = []
    result = reward_model.run(
        config(peft=settings, learning_rate=learning_rate),
        StageInputs(data, ModelRef(tiny_model_dir), tmp_path / "rm", progress.append),
    )

    assert result.status == "completed" and result.steps_completed == 20
    assert result.metrics["held_out_pairs"] == 12
    assert result.metrics["held_out_accuracy"] >= 0.9
    assert result.metrics["held_out_mean_margin"] > 0
    assert [m.step for m in progress if "loss" in m.values][:3] == [1, 2, 3]  # live progress, every step

    model, tokenizer = reward_model.load_reward_model(result.artifact_path, "cpu")
    fresh = keyword_preference(10, seed=99)
    prompts = list(fresh["prompt"])
    chosen = reward_model.score_texts(
        model, tokenizer, prompts, [c[0]["content"] for c in fresh["chosen"]], batch_size=4
    )
    rejected = reward_model.score_texts(model, tokenizer, prompts, list(fresh["rejected"]), batch_size=4)
    assert chosen.shape == (10,) and chosen.dtype == torch.float32
    assert (chosen > rejected).float().mean() >= 0.9


def test_pairs_from_ranking_drop_ties_and_margin_grows_with_rank_distance():
    prompt = [{"role": "user", "content": "q"}]
    pairs = pairs_from_ranking(prompt, ["a", "b", "c", "d"], [1, 2, 2, 3], margin_per_rank=0.5)
    described = {(p["chosen"][0]["content"], p["rejected"][0]["content"]): p["margin"] for p in pairs}
    assert described == {("a", "b"): 0.5, ("a", "c"): 0.5, ("a", "d"): 1.0, ("b", "d"): 0.5, ("c", "d"): 0.5}

    rankings = Dataset.from_list(
        [{"prompt": prompt, "responses": ["x", "y", "z"], "ranks": [2, 1, 2], "domain": "m"}]
    )
    expanded = preference_pairs(rankings, margin_per_rank=1.0)
    assert len(expanded) == 2 and set(expanded["domain"]) == {"m"}
    with pytest.raises(ValueError):
        preference_pairs(Dataset.from_list([{"prompt": prompt, "responses": ["x", "y"], "ranks": [1, 1]}]))


def test_cancel_stops_within_one_step_and_resume_continues_from_checkpoint(tiny_model_dir, tmp_path):
    data = keyword_preference(40)
    out_dir = tmp_path / "rm"
    steps_seen = []

    def stop_after_three() -> bool:
        steps_seen.append(len(steps_seen) + 1)
        return len(steps_seen) >= 3  # one micro-batch per step: asked once per step, true right after step 3

    cancelled = reward_model.run(
        config(max_steps=8, checkpoint_every=2),
        StageInputs(data, ModelRef(tiny_model_dir), out_dir, should_stop=stop_after_three),
    )
    assert cancelled.status == "cancelled" and cancelled.artifact_path is None
    assert cancelled.steps_completed == 3  # stopped right after the step that saw should_stop() true
    assert not out_dir.exists()
    # The one saved on cancel; the periodic step-2 checkpoint before it is removed.
    assert [p.name for p in (tmp_path / "rm.checkpoints").iterdir()] == ["step-00000003"]

    progress = []
    resumed = reward_model.run(
        config(max_steps=8, checkpoint_every=2),
        StageInputs(data, ModelRef(tiny_model_dir), out_dir, progress.append),
    )
    assert resumed.status == "completed" and resumed.steps_completed == 8
    assert [m.step for m in progress if "loss" in m.values] == [4, 5, 6, 7, 8]  # continued at the saved step
    assert (out_dir / "stage.json").is_file() and (out_dir / "model.safetensors").is_file()


def test_no_artifact_after_a_failed_stage(tiny_model_dir, tmp_path, monkeypatch):
    data = keyword_preference(16)

    def fail_at_step_two(metrics):
        if metrics.step == 2:
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        reward_model.run(
            config(max_steps=4), StageInputs(data, ModelRef(tiny_model_dir), tmp_path / "a", fail_at_step_two)
        )
    assert not (tmp_path / "a").exists()

    def half_written(model, tokenizer, settings, folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(finetuning_methods, "save_stage_artifact", half_written)
    with pytest.raises(OSError, match="disk full"):
        reward_model.run(config(max_steps=2), StageInputs(data, ModelRef(tiny_model_dir), tmp_path / "b"))
    # No artifact and no half-written staging folder; only the checkpoint folders, kept for a retry.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.checkpoints", "b.checkpoints"]
