"""PPO stage: learning (reward rises, KL bounded), cancel, exact resume, PEFT references, and the PPO maths.

A random tiny model spreads its probability over 49,152 tokens, so no reward that depends on particular words
could ever be sampled, let alone learnt, in a few iterations. The fixture below therefore first teaches the tiny
model (a few seconds of plain next-token training) to answer with a handful of words: "yes", "no", "maybe", ...
PPO then has a real, learnable choice to make: say "yes" more often.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from training.engine import ppo
from training.engine.common import (
    ModelRef,
    PeftSettings,
    PhaseProgress,
    StageConfigError,
    StageInputs,
    StepMetrics,
    checkpoint_dir_for,
)
from training.engine.ppo import PPOConfig, run
from training.engine.ppo_rollout import (
    AdaptiveKLController,
    generalized_advantages,
    masked_whiten,
    prompt_rows_for_iteration,
)

WORDS = ["yes", "no", "maybe", "sure", "ok", "fine"]
QUESTIONS = [
    "Is it raining?",
    "Shall we go?",
    "Do you agree?",
    "Is this right?",
    "Can you help?",
    "Ready?",
    "Done?",
    "Are you sure?",
]
# A short system message replaces SmolLM2's long default one: shorter sequences, faster tests.
SYSTEM = {"role": "system", "content": "Answer briefly."}
SAY_YES_RULE = {"kind": "keyword", "keywords": ["yes"], "match": "count", "max_count": 3, "whole_word": True}


def chat_prompt(question: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": question}]


def prompt_data() -> Dataset:
    return Dataset.from_list([{"prompt": chat_prompt(question)} for question in QUESTIONS])


@pytest.fixture(scope="module")
def few_words_policy_dir(tmp_path_factory) -> Path:
    """The tiny model after 20 next-token steps on replies made of WORDS (2–5 words, then end of turn)."""
    from training.engine.base_model import build_tiny_model, save_model_atomically

    model, tokenizer = build_tiny_model(seed=0)
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(20):
        prompts = [
            tokenizer.apply_chat_template(
                chat_prompt(rng.choice(QUESTIONS)), tokenize=False, add_generation_prompt=True
            )
            for _ in range(8)
        ]
        replies = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) + tokenizer.eos_token
            for _ in range(8)
        ]
        reply_lengths = [len(tokenizer(reply, add_special_tokens=False)["input_ids"]) for reply in replies]
        # Left padding puts every reply at the end, so only the last positions need the (large) LM head.
        tokenizer.padding_side = "left"
        batch = tokenizer(
            [p + r for p, r in zip(prompts, replies, strict=True)],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        tokenizer.padding_side = "right"
        keep = max(reply_lengths) + 1
        labels = torch.full((len(replies), keep - 1), -100)
        for row, length in enumerate(reply_lengths):
            labels[row, -length:] = batch["input_ids"][row, -length:]
        logits = model(**batch, logits_to_keep=keep).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return save_model_atomically(model, tokenizer, tmp_path_factory.mktemp("policy") / "few-words").path


@pytest.fixture(scope="module")
def yes_reward_model_dir(few_words_policy_dir, tmp_path_factory) -> Path:
    """A reward model trained by the reward stage on pairs where the reply with more "yes" is preferred."""
    from training.engine.reward_model import RewardStageConfig
    from training.engine.reward_model import run as run_reward_model

    rng = random.Random(1)

    def reply(yes_count: int, length: int) -> str:
        words = ["yes"] * yes_count + [rng.choice(WORDS[1:]) for _ in range(length - yes_count)]
        rng.shuffle(words)
        return " ".join(words)

    rows = []
    for _ in range(120):
        length = rng.randint(2, 6)
        more = rng.randint(1, length)
        fewer = rng.randint(0, more - 1)
        rows.append(
            {
                "prompt": chat_prompt(rng.choice(QUESTIONS)),
                "chosen": [{"role": "assistant", "content": reply(more, length)}],
                "rejected": [{"role": "assistant", "content": reply(fewer, length)}],
            }
        )
    out_dir = tmp_path_factory.mktemp("reward") / "yes-rm"
    result = run_reward_model(
        RewardStageConfig(
            max_steps=40,
            learning_rate=1e-3,
            batch_size=8,
            checkpoint_every=0,
            held_out_fraction=0.2,
            max_length=64,
        ),
        StageInputs(Dataset.from_list(rows), ModelRef(path=few_words_policy_dir), out_dir),
    )
    assert result.metrics["held_out_accuracy"] >= 0.85, result.metrics  # the preference was learnt
    return out_dir


def learning_config(**overrides) -> PPOConfig:
    # A short kl_horizon lets the controller visibly steer β within the test's 16 iterations.
    values = dict(
        max_steps=16,
        learning_rate=1e-3,
        batch_size=8,
        mini_batch_size=4,
        ppo_epochs=2,
        max_new_tokens=8,
        max_length=128,
        init_kl_coef=0.1,
        kl_target=3.0,
        kl_horizon=20,
        checkpoint_every=0,
        seed=0,
    )
    values.update(overrides)
    return PPOConfig(**values)


def run_collecting(config, base_dir, out_dir, reward_model=None, should_stop=lambda: False, phases=None):
    """(result, the StepMetrics of finished steps); the PhaseProgress reports go into `phases` when given."""
    reports: list[StepMetrics] = []

    def collect(report) -> None:
        if isinstance(report, PhaseProgress):
            if phases is not None:
                phases.append(report)
        else:
            reports.append(report)

    result = run(
        config,
        StageInputs(
            prompt_data(), ModelRef(path=base_dir), out_dir, collect, should_stop, reward_model=reward_model
        ),
    )
    return result, reports


def mean_of(reports, key, steps) -> float:
    return sum(report.values[key] for report in reports[steps]) / len(reports[steps])


# ----------------------------------------------------------------------------------------------------------------
# Learning


def test_ppo_raises_reward_model_score_while_kl_stays_bounded(
    few_words_policy_dir, yes_reward_model_dir, tmp_path
):
    config = learning_config(reward_source="reward_model")
    result, reports = run_collecting(
        config, few_words_policy_dir, tmp_path / "ppo", reward_model=ModelRef(path=yes_reward_model_dir)
    )

    assert result.status == "completed"
    assert [report.step for report in reports] == list(range(1, config.max_steps + 1))
    first, last = (
        mean_of(reports, "reward_mean", slice(0, 3)),
        mean_of(reports, "reward_mean", slice(-3, None)),
    )
    # Margins measured over seeds 0–4: gains 0.33–1.23 (reward model scores span about −2 … +2.3).
    assert last > first + 0.3, (first, last)
    kls = [report.values["kl"] for report in reports]
    assert max(kls) < 10.0, kls  # nats per completion of ≤ 8 tokens; seeds 0–4 peaked at 4.2–6.3
    for key in (
        "policy_loss",
        "value_loss",
        "entropy",
        "clip_fraction",
        "kl_coef",
        "reward_model_score_mean",
    ):
        assert key in reports[-1].values

    artifact = result.artifact_path
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.json",
        "value_head.safetensors",
        "stage.json",
    ):
        assert (artifact / name).is_file(), name
    history = json.loads((artifact / "metrics.json").read_text())["history"]
    assert [entry["reward_mean"] for entry in history] == [report.values["reward_mean"] for report in reports]
    from training.engine.base_model import load_saved_model

    model, _ = load_saved_model(artifact)
    assert model.config.hidden_size == 64


def test_ppo_raises_rule_reward(few_words_policy_dir, tmp_path):
    config = learning_config(reward_source="rules", rules=[SAY_YES_RULE])
    result, reports = run_collecting(config, few_words_policy_dir, tmp_path / "ppo")

    assert result.status == "completed"
    first, last = (
        mean_of(reports, "reward_mean", slice(0, 3)),
        mean_of(reports, "reward_mean", slice(-3, None)),
    )
    # The rule scores in [0, 1] (number of "yes", up to 3, over 3); seeds 0–4 gained 0.32–0.65.
    assert last > first + 0.2, (first, last)
    assert max(report.values["kl"] for report in reports) < 10.0


def test_mixed_reward_is_the_weighted_sum_of_reward_model_and_rules(
    few_words_policy_dir, yes_reward_model_dir, tmp_path
):
    config = small_config(
        max_steps=1, checkpoint_every=0, reward_source="mixed", reward_model_weight=0.5, rules_weight=2.0
    )
    result, reports = run_collecting(
        config, few_words_policy_dir, tmp_path / "ppo", reward_model=ModelRef(path=yes_reward_model_dir)
    )
    assert result.status == "completed"
    values = reports[0].values
    assert values["reward_mean"] == pytest.approx(
        0.5 * values["reward_model_score_mean"] + 2.0 * values["rules_score_mean"], abs=1e-5
    )


def test_each_iteration_reports_rollout_scoring_and_update_before_its_metrics(few_words_policy_dir, tmp_path):
    everything: list = []
    config = small_config(max_steps=2, checkpoint_every=0)
    run(
        config,
        StageInputs(prompt_data(), ModelRef(path=few_words_policy_dir), tmp_path / "ppo", everything.append),
    )
    shown = [(r.phase, r.step) if isinstance(r, PhaseProgress) else ("metrics", r.step) for r in everything]
    assert shown == [("rollout", 1), ("scoring", 1), ("update", 1), ("metrics", 1),
                     ("rollout", 2), ("scoring", 2), ("update", 2), ("metrics", 2)]  # fmt: skip
    rollout, scoring, update = everything[:3]
    assert rollout.tokens == 4 * 6 and "4 prompts, up to 6 new tokens" in rollout.detail
    assert scoring.tokens > 4 * 6  # with the prompts
    assert update.tokens == scoring.tokens * config.ppo_epochs and all(r.total_steps == 2 for r in everything)


# ----------------------------------------------------------------------------------------------------------------
# Cancel and resume


def small_config(**overrides) -> PPOConfig:
    values = dict(
        max_steps=4,
        learning_rate=1e-3,
        batch_size=4,
        mini_batch_size=2,
        ppo_epochs=1,
        max_new_tokens=6,
        max_length=96,
        reward_source="rules",
        rules=[SAY_YES_RULE],
        checkpoint_every=2,
        seed=3,
    )
    values.update(overrides)
    return PPOConfig(**values)


def test_cancel_stops_within_one_step_and_leaves_no_artifact(few_words_policy_dir, tmp_path):
    asked = {"count": 0}

    def stop_on_second_question() -> bool:
        asked["count"] += 1
        return asked["count"] >= 2

    out_dir = tmp_path / "ppo"
    result, reports = run_collecting(
        small_config(), few_words_policy_dir, out_dir, should_stop=stop_on_second_question
    )

    assert result.status == "cancelled"
    assert result.artifact_path is None
    assert asked["count"] == 2  # nothing ran (no further question asked) after the stop was requested
    assert reports == []  # the first iteration never finished
    assert not out_dir.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(few_words_policy_dir, tmp_path):
    config = small_config()
    uninterrupted, uninterrupted_reports = run_collecting(config, few_words_policy_dir, tmp_path / "straight")

    out_dir = tmp_path / "resumed"
    finished_steps: list[int] = []

    def stop_during_step_four() -> bool:
        return len(finished_steps) >= 3

    reports_before: list[StepMetrics] = []

    def record(metrics: StepMetrics | PhaseProgress) -> None:
        if isinstance(metrics, PhaseProgress):
            return
        finished_steps.append(metrics.step)
        reports_before.append(metrics)

    cancelled = run(
        config,
        StageInputs(
            prompt_data(), ModelRef(path=few_words_policy_dir), out_dir, record, stop_during_step_four
        ),
    )
    assert cancelled.status == "cancelled" and cancelled.steps_completed == 3
    # The cancel saved step 3 (the periodic step-2 checkpoint it replaces was every 2 iterations).
    assert [path.name for path in checkpoint_dir_for(out_dir).glob("step-*")] == ["step-00000003"]

    resumed, resumed_reports = run_collecting(config, few_words_policy_dir, out_dir)

    assert resumed.status == "completed"
    assert [report.step for report in resumed_reports] == [4]  # continues after the step-3 checkpoint
    assert_same_as_uninterrupted(resumed, resumed_reports, uninterrupted, uninterrupted_reports)
    history = json.loads((resumed.artifact_path / "metrics.json").read_text())["history"]
    assert [entry["step"] for entry in history] == [1, 2, 3, 4]  # steps 1–3 came from the checkpoint


def assert_same_as_uninterrupted(resumed, resumed_reports, uninterrupted, uninterrupted_reports) -> None:
    later = uninterrupted_reports[len(uninterrupted_reports) - len(resumed_reports) :]
    for resumed_report, straight_report in zip(resumed_reports, later, strict=True):
        assert resumed_report.step == straight_report.step
        for key, value in straight_report.values.items():
            assert resumed_report.values[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert resumed.metrics == pytest.approx(uninterrupted.metrics, rel=1e-4, abs=1e-5)


def stop_inside_phase(phase: str, step: int, forward_calls, passes: int):
    """(on_progress, should_stop, seen): the stop request comes `passes` forward passes into `phase` of `step`;
    `seen` records the forward count at the phase's start and when should_stop first said True."""
    seen: dict[str, int | None] = {"phase_start": None, "stop_requested": None}

    def on_progress(report) -> None:
        if isinstance(report, PhaseProgress) and (report.phase, report.step) == (phase, step):
            seen["phase_start"] = forward_calls.count

    def should_stop() -> bool:
        if seen["stop_requested"] is None and seen["phase_start"] is not None:
            if forward_calls.count >= seen["phase_start"] + passes:
                seen["stop_requested"] = forward_calls.count
        return seen["stop_requested"] is not None

    return on_progress, should_stop, seen


# (phase, forward passes into it when the stop request comes, what has run by then)
MID_PHASE_STOPS = {
    # the prefill and one decode step of six: the rollout is mid-generation
    "rollout": ("rollout", 2),
    # the policy's and the reference's pass over the first mini-batch of two
    "scoring": ("scoring", 2),
    # micro-batch 1 of 2 of the second mini-batch: one optimizer step of this iteration has changed the weights
    "update": ("update", 3),
}


@pytest.mark.parametrize("where", MID_PHASE_STOPS)
def test_a_cancel_inside_an_iteration_stops_at_once_keeps_the_last_iteration_and_resumes_exactly(
    few_words_policy_dir, tmp_path, forward_calls, where
):
    config = small_config(max_steps=3, checkpoint_every=100, gradient_accumulation_steps=2)
    uninterrupted, uninterrupted_reports = run_collecting(config, few_words_policy_dir, tmp_path / "straight")

    phase, passes = MID_PHASE_STOPS[where]
    on_progress, should_stop, seen = stop_inside_phase(phase, 2, forward_calls, passes)
    out_dir = tmp_path / "cancelled"
    cancelled = run(
        config,
        StageInputs(prompt_data(), ModelRef(path=few_words_policy_dir), out_dir, on_progress, should_stop),
    )
    assert cancelled.status == "cancelled" and cancelled.steps_completed == 1 and not out_dir.exists()
    # Asked before every pass: the request came right after the chosen pass, and no pass ran after it.
    assert seen["stop_requested"] == seen["phase_start"] + passes == forward_calls.count
    assert [path.name for path in checkpoint_dir_for(out_dir).glob("step-*")] == ["step-00000001"]

    resumed, resumed_reports = run_collecting(config, few_words_policy_dir, out_dir)
    assert resumed.status == "completed" and [report.step for report in resumed_reports] == [2, 3]
    # Step 2 ran again from its start: the checkpoint holds iteration 1, not the half-updated weights.
    assert_same_as_uninterrupted(resumed, resumed_reports, uninterrupted, uninterrupted_reports)


# ----------------------------------------------------------------------------------------------------------------
# PEFT: the reference is the same model with the adapter disabled, never a second copy


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_peft_ppo_uses_the_disabled_adapter_as_reference(few_words_policy_dir, tmp_path, monkeypatch, method):
    loads = []
    original_load = ppo.load_model_ref

    def counting_load(ref, *args, **kwargs):
        loads.append(kwargs.get("task", "causal_lm"))
        return original_load(ref, *args, **kwargs)

    monkeypatch.setattr(ppo, "load_model_ref", counting_load)
    # A length rule: unlike a keyword it differs between any two completions, so the first update is never empty.
    config = small_config(
        max_steps=2,
        checkpoint_every=0,
        learning_rate=5e-3,
        rules=[{"kind": "length", "target": 0, "tolerance": 40}],
        peft=PeftSettings(method=method, lora_r=4, adapter_bottleneck=8),
    )
    result, reports = run_collecting(config, few_words_policy_dir, tmp_path / "ppo")

    assert result.status == "completed"
    assert loads == ["causal_lm"]  # the policy only: no frozen reference copy
    # Before the first update the adapter is the identity (zero-initialised), so policy == reference.
    assert reports[0].values["kl"] == pytest.approx(0.0, abs=1e-5)
    assert reports[1].values["kl"] != pytest.approx(0.0, abs=1e-6)  # after updates the policy has moved
    trained, _ = original_load(ModelRef(path=result.artifact_path), "cpu")
    base, _ = original_load(ModelRef(path=few_words_policy_dir), "cpu")
    probe = torch.tensor([[1, 9690, 198, 9842, 14137, 30]])
    assert not torch.allclose(trained(probe).logits, base(probe).logits)


def test_full_fine_tuning_keeps_a_frozen_reference_copy(few_words_policy_dir, tmp_path, monkeypatch):
    loads = []
    original_load = ppo.load_model_ref
    monkeypatch.setattr(
        ppo,
        "load_model_ref",
        lambda ref, *args, **kwargs: loads.append(ref) or original_load(ref, *args, **kwargs),
    )
    result, reports = run_collecting(
        small_config(max_steps=1, checkpoint_every=0), few_words_policy_dir, tmp_path / "ppo"
    )
    assert result.status == "completed"
    assert len(loads) == 2  # the policy and its frozen reference
    assert reports[0].values["kl"] == pytest.approx(0.0, abs=1e-5)


def test_gradient_accumulation_takes_the_same_optimizer_step_as_the_whole_minibatch(
    few_words_policy_dir, tmp_path, monkeypatch
):
    """Rollouts of unequal lengths: each micro-batch's loss counts by its share of the minibatch's tokens, so 2 or 4
    micro-batches train the same weights as one (the launch raises the accumulation where memory needs it)."""
    from safetensors.torch import load_file

    completion_lengths = []
    real_update = ppo.ppo_update

    def recording_update(models, optimizer, parameters, rollout, *args, **kwargs):
        completion_lengths.append(rollout.mask.sum(dim=1).tolist())
        return real_update(models, optimizer, parameters, rollout, *args, **kwargs)

    monkeypatch.setattr(ppo, "ppo_update", recording_update)
    weights = {}
    for accumulation in (1, 2, 4):
        config = small_config(
            max_steps=1, checkpoint_every=0, batch_size=4, mini_batch_size=4, max_new_tokens=12,
            gradient_accumulation_steps=accumulation, peft=PeftSettings(method="full"),
        )  # fmt: skip
        result, _ = run_collecting(config, few_words_policy_dir, tmp_path / f"ppo-{accumulation}")
        weights[accumulation] = {
            **load_file(result.artifact_path / "model.safetensors"),
            **load_file(result.artifact_path / ppo.VALUE_HEAD_FILE),
        }
    assert completion_lengths[0] == completion_lengths[1] == completion_lengths[2]  # the same rollout
    assert len(set(completion_lengths[0])) > 1, completion_lengths  # whose rows' token counts differ
    base = load_file(few_words_policy_dir / "model.safetensors")
    assert any(not torch.equal(weights[1][name], base[name]) for name in base)  # the step moved the policy
    for accumulation in (2, 4):
        for name, tensor in weights[1].items():
            torch.testing.assert_close(weights[accumulation][name], tensor, rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------------------------
# The pieces of the objective


def test_generalized_advantages_match_a_hand_computation():
    rewards = torch.tensor([[0.0, 0.5, 1.0, 0.0]])
    values = torch.tensor(
        [[0.2, 0.4, 0.6, 9.0]]
    )  # the 9 sits after the end of the completion and must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    advantages, returns = generalized_advantages(rewards, values, mask, gamma, lam)

    delta_2 = 1.0 + gamma * 0.0 - 0.6
    delta_1 = 0.5 + gamma * 0.6 - 0.4
    delta_0 = 0.0 + gamma * 0.4 - 0.2
    expected_2 = delta_2
    expected_1 = delta_1 + gamma * lam * expected_2
    expected_0 = delta_0 + gamma * lam * expected_1
    assert advantages[0, :3].tolist() == pytest.approx([expected_0, expected_1, expected_2])
    assert advantages[0, 3] == 0
    assert returns[0, :3].tolist() == pytest.approx([expected_0 + 0.2, expected_1 + 0.4, expected_2 + 0.6])


def test_masked_whiten_ignores_padding_and_can_keep_the_mean():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    whitened = masked_whiten(values, mask)
    assert whitened[0, :3].mean() == pytest.approx(0.0, abs=1e-6)
    assert whitened[0, :3].std(unbiased=False) == pytest.approx(1.0, abs=1e-4)
    assert whitened[0, 3] == 0
    scaled = masked_whiten(values, mask, shift_mean=False)
    assert scaled[0, :3].mean() == pytest.approx(2.0, abs=1e-5)


def test_adaptive_kl_controller_moves_towards_the_target_and_clips_its_step():
    controller = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=100)
    controller.update(observed_kl=12.0, num_samples=10)  # error +1.0, clipped to +0.2
    assert controller.coef == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    controller.update(observed_kl=3.0, num_samples=10)  # error -0.5, clipped to -0.2
    assert controller.coef == pytest.approx(0.1 * (1 + 0.02) * (1 - 0.02))
    fixed = AdaptiveKLController(init_coef=0.1, target=None, horizon=100)
    fixed.update(observed_kl=50.0, num_samples=10)
    assert fixed.coef == 0.1


def test_rollout_prompts_cover_each_pass_once_and_depend_only_on_seed_and_iteration():
    data = Dataset.from_list([{"prompt": index} for index in range(5)])
    drawn = [
        row["prompt"]
        for iteration in range(5)
        for row in prompt_rows_for_iteration(data, iteration, 3, seed=1)
    ]
    assert sorted(drawn[:5]) == sorted(drawn[5:10]) == sorted(drawn[10:]) == list(range(5))
    assert drawn[:5] != drawn[5:10]  # each pass is shuffled afresh
    assert [row["prompt"] for row in prompt_rows_for_iteration(data, 3, 3, seed=1)] == drawn[9:12]


def test_config_rejects_bad_reward_settings():
    with pytest.raises(ValueError, match="reward_source"):
        PPOConfig(reward_source="vibes")
    with pytest.raises(StageConfigError, match="rules: rule #0"):
        PPOConfig(reward_source="rules", rules=[{"kind": "regex", "pattern": "("}])
    with pytest.raises(StageConfigError, match="rules: .*at least one"):
        PPOConfig(reward_source="rules", rules=[])
    with pytest.raises(StageConfigError, match="rules: rule #0"):  # given rules are checked even when unused
        PPOConfig(reward_source="reward_model", rules=[{"kind": "execute", "code": "1"}])
    with pytest.raises(ValueError, match="mini_batch_size"):
        PPOConfig(batch_size=4, mini_batch_size=8)


def test_reward_model_source_needs_a_reward_model(few_words_policy_dir, tmp_path):
    with pytest.raises(ValueError, match="needs a reward model"):
        run_collecting(small_config(reward_source="mixed"), few_words_policy_dir, tmp_path / "ppo")
    assert not (tmp_path / "ppo").exists()


def test_reference_rules_need_their_column(few_words_policy_dir, tmp_path):
    config = small_config(rules=[{"kind": "reference_exact", "field": "answer"}])
    with pytest.raises(ValueError, match="'answer'"):
        run_collecting(config, few_words_policy_dir, tmp_path / "ppo")
