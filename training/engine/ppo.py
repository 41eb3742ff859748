"""PPO stage: optimise a policy against a reward (a reward model, rules, or both), kept near its parent by a KL penalty.

TRL 1.x dropped PPO, so this is our own, written as one loop (Ziegler et al. 2019; Stiennon et al. 2020; Huang et
al., "The N Implementation Details of RLHF with PPO", 2024). One PPO *iteration* (= one `step` of the stage):

    rollout   sample one completion per prompt with the current policy        (generation.py, KV cache)
    score     sequence score s from the reward model and/or the rules          (reward_model.py, reward_rules.py)
    evaluate  old log-probs and values of the policy, log-probs of the reference, without gradients
    reward    per token: r_t = -β·(log π_old − log π_ref)_t, plus s at the completion's last token
              (optionally scaled to unit variance: reward whitening)
    GAE       δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γλ·A_{t+1},  return_t = A_t + V_t;  A whitened
    update    `ppo_epochs` passes over shuffled minibatches:
              policy loss  = mean max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)),    ρ = π_θ / π_old per token
              value loss   = ½·mean max((V_θ − R)², (clip(V_θ, V_old ± ε_v) − R)²)
              loss         = policy loss + c_v·value loss
    adapt β   adaptive KL controller: β ← β·(1 + clip(KL/target − 1, ±0.2)·batch/horizon)

Choices, and why:
- Critic: a scalar linear head on the policy's last hidden state (shared trunk), zero-initialised so the value loss
  sends no gradient into the trunk until the head has learnt something. A separate critic would double the memory
  and the forward passes; the shared trunk is what OpenAI's and TRL's original implementations did.
- Reference: the parent weights. With LoRA or a bottleneck adapter the reference is the same model with the adapter
  disabled (no second copy); with full fine-tuning it is a frozen second copy of the parent.
- Dropout stays off (the model stays in eval mode) so that old and new log-probs of the same tokens agree at
  ratio 1 before the first update.
- Log-probs are taken at the sampling temperature, so π_old is the distribution the tokens were sampled from.
- Host syncs: metrics stay on the device during an iteration and are read back once at its end.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from datasets import Dataset
from safetensors.torch import save_file
from torch import nn

from training.engine import checkpoints
from training.engine.common import (
    Bounds,
    ModelRef,
    PhaseProgress,
    StageCancelled,
    StageConfig,
    StageInputs,
    StageResult,
    StepMetrics,
    StopCallback,
    check_finite_training,
    checkpoint_dir_for,
    pick_device,
    seed_everything,
    staged_output,
    stop_if_asked,
    training_dtype,
    write_json,
)
from training.engine.finetuning_methods import (
    autocast_for,
    disabled_adapters,
    has_disableable_adapter,
    load_model_ref,
    prepare_model,
    resolve_model_ref,
    save_stage_artifact,
    trainable_parameters,
)
from training.engine.generation import GeneratedBatch, SamplingSettings, generate, positions_from_mask
from training.engine.reward_model import score_texts
from training.engine.reward_rules import (
    ReferenceExactRule,
    ReferenceRegexRule,
    RuleReward,
    RuleSpecError,
    parse_rules,
)

STAGE_NAME = "ppo"
RewardSource = Literal["reward_model", "rules", "mixed"]
VALUE_HEAD_FILE = "value_head.safetensors"
METRICS_FILE = "metrics.json"


@dataclass
class PPOConfig(StageConfig):
    """`max_steps` counts PPO iterations (rollout + updates); `batch_size` is the number of prompts per rollout."""

    max_steps: int = 100
    learning_rate: float = 1e-5
    batch_size: int = 16
    checkpoint_every: int = 10  # PPO iterations; 0 disables checkpoints
    # Updates
    mini_batch_size: int = 8  # rollout rows per optimizer step (split further by gradient_accumulation_steps)
    ppo_epochs: int = 4
    clip_range: float = 0.2  # ε of the clipped surrogate
    value_clip_range: float = 0.2  # ε_v: how far a value prediction may move from the rollout's value
    value_loss_coef: float = 0.1  # c_v
    max_grad_norm: float = 1.0
    gamma: float = 1.0  # discount; 1 because the episode is one short completion
    lam: float = 0.95  # GAE λ
    # KL penalty against the reference
    init_kl_coef: float = 0.05  # β at the start
    kl_target: float | None = 6.0  # nats per completion; None keeps β fixed
    kl_horizon: int = 10000  # samples over which the controller closes the gap to the target
    whiten_rewards: bool = True
    # Rollouts
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    # Reward source
    reward_source: RewardSource = "reward_model"
    reward_model_weight: float = 1.0
    rules_weight: float = 1.0
    rules: list[dict] = field(default_factory=list)  # rule specs, see reward_rules.py
    missing_eos_penalty: float | None = None  # subtracted from the score of completions cut at max_new_tokens
    reward_batch_size: int = 16

    LIMITS: ClassVar[dict[str, Bounds]] = {
        "mini_batch_size": Bounds(1, 4096),
        "ppo_epochs": Bounds(1, 100),
        "clip_range": Bounds(0, 1, low_open=True),
        "value_clip_range": Bounds(0, 100, low_open=True),
        "value_loss_coef": Bounds(0, 100),
        "max_grad_norm": Bounds(0, 10_000, low_open=True),
        "gamma": Bounds(0, 1),
        "lam": Bounds(0, 1),
        "init_kl_coef": Bounds(0, 100),
        "kl_target": Bounds(0, 10_000, low_open=True),  # None keeps β fixed
        "kl_horizon": Bounds(1, 1_000_000_000),
        "max_new_tokens": Bounds(1, 32_768),
        "temperature": Bounds(
            0, 10, low_open=True
        ),  # log-probs are taken at this temperature: 0 divides by 0
        "top_p": Bounds(0, 1, low_open=True),
        "reward_model_weight": Bounds(0, 100),
        "rules_weight": Bounds(0, 100),
        "missing_eos_penalty": Bounds(0, 100),
        "reward_batch_size": Bounds(1, 4096),
    }

    def errors(self) -> dict[str, str]:
        errors = super().errors()
        # Rules given are checked even when this source does not use them; the rule sources need at least one.
        if "rules" not in errors and (self.rules or self.reward_source in ("rules", "mixed")):
            try:
                parse_rules(self.rules)
            except RuleSpecError as exc:  # names the bad rule and its field
                errors["rules"] = str(exc)
        checked = {
            "batch_size",
            "mini_batch_size",
            "gradient_accumulation_steps",
            "max_new_tokens",
            "max_length",
        }
        if checked & set(errors):
            return errors  # the cross-field rules below compare values that are known to be in range
        if self.mini_batch_size > self.batch_size:
            errors["mini_batch_size"] = (
                f"mini_batch_size ({self.mini_batch_size}) cannot be larger than batch_size ({self.batch_size}), "
                "the number of prompts per rollout"
            )
        if self.gradient_accumulation_steps > self.mini_batch_size:
            errors["gradient_accumulation_steps"] = (
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) cannot be larger than "
                f"mini_batch_size ({self.mini_batch_size})"
            )
        if self.max_new_tokens >= self.max_length:
            errors["max_new_tokens"] = (
                f"max_new_tokens ({self.max_new_tokens}) must be smaller than max_length ({self.max_length}), "
                "which holds the prompt and the completion"
            )
        return errors

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            max_prompt_length=self.max_length - self.max_new_tokens,
        )


class AdaptiveKLController:
    """Ziegler et al. (2019): move β so that the observed KL per completion approaches `target`.

    The proportional error is clipped to ±20% so one noisy batch cannot swing β far; `horizon` sets how many
    samples it takes to close the gap. With `target=None` β stays at its initial value.
    """

    def __init__(self, init_coef: float, target: float | None, horizon: int):
        self.coef = init_coef
        self.target = target
        self.horizon = horizon

    def update(self, observed_kl: float, num_samples: int) -> None:
        if self.target is None:
            return
        proportional_error = min(max(observed_kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + proportional_error * num_samples / self.horizon


class ValueHead(nn.Module):
    """The critic: one scalar per position, read from the policy's last hidden state."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden_states).squeeze(-1)


# ----------------------------------------------------------------------------------------------------------------
# Tensor helpers: masked statistics, per-token log-probs, GAE


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Unit variance over the masked entries; `shift_mean=False` keeps the mean (used for rewards, see below)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def completion_forward(
    model,
    value_head: ValueHead | None,
    sequence_ids,
    sequence_mask,
    completion_width: int,
    temperature: float,
):
    """Log-probs, entropies and values of the completion tokens of `sequence_ids` = [prompt | completion].

    Only the last `completion_width + 1` positions go through the LM head: position t-1 predicts token t, so the
    logits at the last prompt token up to the second-to-last completion token score the completion.
    """
    outputs = model(
        input_ids=sequence_ids,
        attention_mask=sequence_mask,
        position_ids=positions_from_mask(sequence_mask),
        output_hidden_states=value_head is not None,
        logits_to_keep=completion_width + 1,
        use_cache=False,
    )
    logits = outputs.logits[:, :-1].float()
    if temperature > 0:
        logits = logits / temperature
    log_probs_all = logits.log_softmax(dim=-1)
    completion_ids = sequence_ids[:, -completion_width:]
    log_probs = log_probs_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs_all.exp() * log_probs_all).sum(dim=-1)
    values = None
    if value_head is not None:
        hidden = outputs.hidden_states[-1][:, -(completion_width + 1) : -1]
        values = value_head(hidden).float()
    return log_probs, entropy, values


def generalized_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the completion tokens (right-padded: after a row's last token, value and reward are 0)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = advantages + values
    return advantages * mask, returns * mask


# ----------------------------------------------------------------------------------------------------------------
# Reward: reward model, rules, or a weighted sum


class SequenceScorer:
    """Scores completions with the configured source; returns [batch] float32 plus per-source means for metrics."""

    def __init__(self, config: PPOConfig, reward_model: ModelRef | None, device):
        self.config = config
        self.device = device
        self.rule_reward = RuleReward(config.rules) if config.reward_source in ("rules", "mixed") else None
        self.reward_model = self.reward_tokenizer = None
        if config.reward_source in ("reward_model", "mixed"):
            model, tokenizer = load_model_ref(
                reward_model, device, task="reward", dtype=training_dtype(device)
            )
            self.reward_model = model.eval().requires_grad_(False)
            self.reward_tokenizer = tokenizer

    def score(
        self, rows: list[dict], texts: list[str], should_stop: StopCallback | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = torch.zeros(len(texts), device=self.device)
        parts = {}
        if self.reward_model is not None:
            size = self.config.reward_batch_size
            chunks = []
            for start in range(0, len(texts), size):  # a cancel point between reward-model batches
                stop_if_asked(should_stop)
                chunks.append(
                    score_texts(
                        self.reward_model,
                        self.reward_tokenizer,
                        [row["prompt"] for row in rows[start : start + size]],
                        texts[start : start + size],
                        size,
                        self.config.max_length,
                    )
                )
            model_scores = torch.cat(chunks).to(self.device)
            parts["reward_model_score"] = model_scores.mean()
            total = total + self.config.reward_model_weight * model_scores
        if self.rule_reward is not None:
            rule_scores = torch.tensor(
                self.rule_reward.score(texts, rows), dtype=torch.float32, device=self.device
            )
            parts["rules_score"] = rule_scores.mean()
            total = total + self.config.rules_weight * rule_scores
        return total, parts


def check_inputs(data: Dataset, config: PPOConfig, reward_model: ModelRef | None) -> None:
    """Fail before any model is loaded when the data or the reward settings cannot work."""
    if "prompt" not in data.column_names:
        raise ValueError(f"PPO data needs a 'prompt' column (chat messages); it has {data.column_names}")
    if len(data) == 0:
        raise ValueError("PPO data is empty")
    if config.reward_source in ("reward_model", "mixed") and reward_model is None:
        raise ValueError(f"reward_source={config.reward_source!r} needs a reward model")
    if config.reward_source in ("rules", "mixed"):
        for rule in parse_rules(config.rules):
            if (
                isinstance(rule, ReferenceExactRule | ReferenceRegexRule)
                and rule.field not in data.column_names
            ):
                raise ValueError(
                    f"rule {rule.kind} reads column {rule.field!r}, which the data lacks "
                    f"(columns: {data.column_names})"
                )


def prompt_rows_for_iteration(data: Dataset, iteration: int, batch_size: int, seed: int) -> list[dict]:
    """The rows of one rollout: a fresh seeded shuffle per pass over the data, so any iteration can be rebuilt
    from (seed, iteration) alone, which is what makes resume exact without saving a sampler."""
    orders: dict[int, torch.Tensor] = {}
    rows = []
    for position in range(iteration * batch_size, (iteration + 1) * batch_size):
        data_pass, index = divmod(position, len(data))
        if data_pass not in orders:
            orders[data_pass] = torch.randperm(
                len(data), generator=torch.Generator().manual_seed(seed * 1_000_003 + data_pass)
            )
        rows.append(data[int(orders[data_pass][index])])
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints (checkpoints.py): policy (trainable part) + value head + optimizer + KL controller + RNG + history


def capture_iteration(
    iteration: int,
    policy,
    value_head,
    optimizer,
    kl_controller,
    generators: dict,
    history: list[dict[str, float]],
) -> checkpoints.Checkpoint:
    """Everything a resume needs after `iteration` completed iterations, copied to the CPU.

    Taken at the start of each iteration, so a cancel in the middle of the next one (its updates change the
    weights in place) still saves the state of the last completed iteration. It costs one copy of the trainable
    parameters and their optimizer state per iteration (small with LoRA or an adapter), only with checkpoints on.
    """
    return checkpoints.capture(
        iteration,
        parameters=trained_parameters(policy, value_head),
        optimizer=optimizer,
        generators=generators,
        # the history, so that the artifact's metrics.json covers the whole run after a resume
        stage_state={"kl_coef": kl_controller.coef, "history": list(history)},
    )


def trained_parameters(policy, value_head) -> dict[str, torch.nn.Parameter]:
    return {
        **{f"policy.{name}": parameter for name, parameter in trainable_parameters(policy).items()},
        **{f"value_head.{name}": parameter for name, parameter in value_head.named_parameters()},
    }


# ----------------------------------------------------------------------------------------------------------------
# The stage


def run(config: PPOConfig, inputs: StageInputs) -> StageResult:
    data, base, reward_model = inputs.data, inputs.base, inputs.reward_model
    on_progress, should_stop = inputs.on_progress, inputs.should_stop
    out_dir = Path(inputs.out_dir)
    if out_dir.exists():
        # Found now rather than when the finished artifact is moved into place, after all the training.
        raise FileExistsError(f"{out_dir} already exists; artifacts are immutable")
    check_inputs(data, config, reward_model)
    seed_everything(config.seed)
    device = pick_device(config.device)
    checkpoint_dir = checkpoint_dir_for(out_dir)

    # Policy in fp32 (its master weights); on CUDA the forward passes run under bf16 autocast.
    policy, tokenizer = load_model_ref(base, device, task="causal_lm")
    policy = prepare_model(policy, config.peft).eval()
    value_head = ValueHead(policy.config.hidden_size).to(device)
    # A bottleneck adapter continued from a parent adapter artifact: disabling it would give the grandparent,
    # so the reference is then a separate frozen copy of the parent, like with full fine-tuning.
    parent_has_adapter = resolve_model_ref(base).adapter_path is not None
    if has_disableable_adapter(policy) and not (config.peft.method == "adapter" and parent_has_adapter):
        reference, reference_context = policy, lambda: disabled_adapters(policy)
    else:
        reference, _ = load_model_ref(base, device, task="causal_lm", dtype=training_dtype(device))
        reference = reference.eval().requires_grad_(False)
        reference_context = nullcontext
    scorer = SequenceScorer(config, reward_model, device)

    parameters = list(trainable_parameters(policy).values()) + list(value_head.parameters())
    # eps 1e-5 as in OpenAI's and TRL's PPO: Adam's default 1e-8 makes early updates of tiny-gradient weights large.
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, eps=1e-5, weight_decay=0.0)
    kl_controller = AdaptiveKLController(config.init_kl_coef, config.kl_target, config.kl_horizon)
    sampling_generator = torch.Generator(device=device).manual_seed(config.seed)
    shuffle_generator = torch.Generator().manual_seed(config.seed + 1)

    generators = {"sampling": sampling_generator, "shuffle": shuffle_generator}
    start_iteration, history = 0, []
    if (path := checkpoints.latest(checkpoint_dir)) is not None:
        checkpoint = checkpoints.read(path)
        checkpoint.restore_parameters(trained_parameters(policy, value_head))
        checkpoint.restore_optimizer(optimizer)
        checkpoint.restore_rng(generators)
        kl_controller.coef = checkpoint.stage_state["kl_coef"]
        start_iteration, history = checkpoint.step, checkpoint.stage_state["history"]

    sampling = config.sampling
    boundary = None  # the state after the last completed iteration, for a checkpoint on cancel
    saved_iteration = start_iteration
    try:
        for iteration in range(start_iteration, config.max_steps):
            if config.checkpoint_every > 0:
                boundary = capture_iteration(
                    iteration, policy, value_head, optimizer, kl_controller, generators, history
                )
                if iteration > start_iteration and iteration % config.checkpoint_every == 0:
                    checkpoints.write(checkpoint_dir, boundary)
                    saved_iteration = iteration
            stop_if_asked(should_stop)
            rows = prompt_rows_for_iteration(data, iteration, config.batch_size, config.seed)
            step = iteration + 1

            # ---- rollout: sample completions with the current policy
            detail = f"{len(rows)} prompts, up to {sampling.max_new_tokens} new tokens each"
            on_progress(
                PhaseProgress(step, config.max_steps, "rollout", detail, len(rows) * sampling.max_new_tokens)
            )
            with autocast_for(device):
                batch = generate(
                    policy,
                    tokenizer,
                    [row["prompt"] for row in rows],
                    sampling,
                    sampling_generator,
                    should_stop,
                )
            tokens = len(rows) * (
                batch.prompt_ids.shape[1] + batch.completion_ids.shape[1]
            )  # shapes: no sync
            detail = f"{len(rows)} completions, {tokens} tokens with their prompts"
            on_progress(PhaseProgress(step, config.max_steps, "scoring", detail, tokens))
            scores, score_parts = scorer.score(rows, batch.texts, should_stop)
            if config.missing_eos_penalty is not None:
                scores = scores - config.missing_eos_penalty * (~batch.ended_with_eos).float()

            # ---- evaluate the rollout: old log-probs and values, reference log-probs
            old_log_probs, old_values, reference_log_probs = evaluate_rollout(
                policy, value_head, reference, reference_context, batch, config, device, should_stop
            )
            mask = batch.completion_mask.float()

            # ---- per-token reward: KL penalty everywhere, sequence score on the last token
            kl_per_token = (old_log_probs - reference_log_probs) * mask
            kl_penalty = -kl_controller.coef * kl_per_token
            last_token_index = batch.completion_lengths - 1
            rewards = kl_penalty.clone()
            rewards[torch.arange(len(rows), device=device), last_token_index] += scores
            if config.whiten_rewards:
                # Scale only: shifting the mean would add a constant per-token reward, i.e. a length bonus/penalty.
                rewards = masked_whiten(rewards, mask, shift_mean=False)

            # ---- advantages and returns (GAE), advantages whitened per rollout
            advantages, returns = generalized_advantages(rewards, old_values, mask, config.gamma, config.lam)
            advantages = masked_whiten(advantages, mask)

            # ---- PPO epochs over shuffled minibatches
            detail = f"{config.ppo_epochs} epoch(s) over {len(rows)} rollouts, {tokens} tokens each epoch"
            on_progress(PhaseProgress(step, config.max_steps, "update", detail, tokens * config.ppo_epochs))
            update_stats = ppo_update(
                policy,
                value_head,
                optimizer,
                parameters,
                batch,
                old_log_probs,
                old_values,
                advantages,
                returns,
                mask,
                config,
                shuffle_generator,
                should_stop,
                device,
            )

            # ---- bookkeeping: one host sync for all metrics of this iteration
            sequence_kl = kl_per_token.sum(dim=1).mean()
            device_metrics = {
                "reward_mean": scores.mean(),
                "reward_std": scores.std(unbiased=False),
                "kl": sequence_kl,
                "kl_penalty_mean": kl_penalty.sum(dim=1).mean(),
                "completion_length": mask.sum(dim=1).mean(),
                "eos_fraction": batch.ended_with_eos.float().mean(),
                "value_mean": masked_mean(old_values, mask),
                "return_mean": masked_mean(returns, mask),
                **{f"{name}_mean": value for name, value in score_parts.items()},
                **update_stats,
            }
            names = list(device_metrics)
            values = dict(
                zip(
                    names, torch.stack([device_metrics[name].float() for name in names]).tolist(), strict=True
                )
            )
            values["kl_coef"] = kl_controller.coef
            kl_controller.update(values["kl"], len(rows))
            history.append({"step": iteration + 1, **values})
            on_progress(StepMetrics(step=iteration + 1, total_steps=config.max_steps, values=values))
            check_finite_training(values, step=iteration + 1, learning_rate=config.learning_rate)
    except StageCancelled:
        # Checkpoints on: the last completed iteration is kept, whatever phase of the next one was cancelled.
        if boundary is not None and boundary.step > saved_iteration:
            checkpoints.write(checkpoint_dir, boundary)
        last = history[-1] if history else {}
        return StageResult(
            status="cancelled",
            artifact_path=None,
            metrics={key: value for key, value in last.items() if key != "step"},
            steps_completed=int(last.get("step", start_iteration)),
        )

    final_metrics = {key: value for key, value in history[-1].items() if key != "step"} if history else {}
    with staged_output(out_dir) as staging:
        save_stage_artifact(
            policy,
            tokenizer,
            config.peft,
            staging,
            stage=STAGE_NAME,
            base=base,
            config=config.to_dict(),
            metrics=final_metrics,
        )
        # The critic is not part of the policy; kept beside it so a later PPO stage can warm-start its values.
        save_file(
            {key: value.detach().cpu().contiguous() for key, value in value_head.state_dict().items()},
            str(staging / VALUE_HEAD_FILE),
        )
        write_json(staging / METRICS_FILE, {"final": final_metrics, "history": history})
    return StageResult(
        status="completed", artifact_path=out_dir, metrics=final_metrics, steps_completed=config.max_steps
    )


@torch.no_grad()
def evaluate_rollout(
    policy,
    value_head,
    reference,
    reference_context,
    batch: GeneratedBatch,
    config: PPOConfig,
    device,
    should_stop: StopCallback | None = None,
):
    """Log-probs and values under the sampling policy, and reference log-probs, in minibatch-sized chunks;
    `should_stop` is asked before every pass."""
    sequence_ids, sequence_mask = batch.sequence_ids, batch.sequence_mask
    width = batch.completion_ids.shape[1]
    old_log_probs, old_values, reference_log_probs = [], [], []
    for rows in torch.arange(len(sequence_ids), device=device).split(config.mini_batch_size):
        stop_if_asked(should_stop)
        with autocast_for(device):
            log_probs, _, values = completion_forward(
                policy, value_head, sequence_ids[rows], sequence_mask[rows], width, config.temperature
            )
            stop_if_asked(should_stop)
            with reference_context():
                ref_log_probs, _, _ = completion_forward(
                    reference, None, sequence_ids[rows], sequence_mask[rows], width, config.temperature
                )
        old_log_probs.append(log_probs)
        old_values.append(values)
        reference_log_probs.append(ref_log_probs)
    return torch.cat(old_log_probs), torch.cat(old_values), torch.cat(reference_log_probs)


def ppo_update(
    policy,
    value_head,
    optimizer,
    parameters,
    batch: GeneratedBatch,
    old_log_probs,
    old_values,
    advantages,
    returns,
    mask,
    config: PPOConfig,
    shuffle_generator,
    should_stop,
    device,
) -> dict[str, torch.Tensor]:
    """`ppo_epochs` passes of clipped-surrogate + clipped-value updates; returns device-side mean statistics."""
    sequence_ids, sequence_mask = batch.sequence_ids, batch.sequence_mask
    width = batch.completion_ids.shape[1]
    rollout_size = len(sequence_ids)
    totals = {
        name: torch.zeros((), device=device)
        for name in (
            "policy_loss",
            "value_loss",
            "entropy",
            "clip_fraction",
            "value_clip_fraction",
            "approx_kl",
        )
    }
    micro_batches_seen = 0
    grad_norm_sum, optimizer_steps = torch.zeros((), device=device), 0
    for _ in range(config.ppo_epochs):
        order = torch.randperm(rollout_size, generator=shuffle_generator).to(device)
        for minibatch in order.split(config.mini_batch_size):
            micro_batches = minibatch.tensor_split(min(config.gradient_accumulation_steps, len(minibatch)))
            for rows in micro_batches:
                stop_if_asked(should_stop)  # between micro-batches: a cancel drops the half-accumulated step
                with autocast_for(device):
                    log_probs, entropy, values = completion_forward(
                        policy, value_head, sequence_ids[rows], sequence_mask[rows], width, config.temperature
                    )
                row_mask = mask[rows]
                row_advantages, row_returns = advantages[rows], returns[rows]

                log_ratio = log_probs - old_log_probs[rows]
                ratio = torch.exp(log_ratio)
                policy_loss_unclipped = -row_advantages * ratio
                policy_loss_clipped = -row_advantages * ratio.clamp(
                    1 - config.clip_range, 1 + config.clip_range
                )
                policy_loss = masked_mean(torch.maximum(policy_loss_unclipped, policy_loss_clipped), row_mask)

                values_clipped = old_values[rows] + (values - old_values[rows]).clamp(
                    -config.value_clip_range, config.value_clip_range
                )
                value_error_unclipped = (values - row_returns) ** 2
                value_error_clipped = (values_clipped - row_returns) ** 2
                value_loss = 0.5 * masked_mean(
                    torch.maximum(value_error_unclipped, value_error_clipped), row_mask
                )

                loss = policy_loss + config.value_loss_coef * value_loss
                (loss / len(micro_batches)).backward()

                with torch.no_grad():
                    totals["policy_loss"] += policy_loss
                    totals["value_loss"] += value_loss
                    totals["entropy"] += masked_mean(entropy, row_mask)
                    totals["clip_fraction"] += masked_mean(
                        ((ratio - 1).abs() > config.clip_range).float(), row_mask
                    )
                    totals["value_clip_fraction"] += masked_mean(
                        (value_error_clipped > value_error_unclipped).float(), row_mask
                    )
                    # Schulman's low-variance estimator of KL(π_old ‖ π_θ): how far this update moved the policy.
                    totals["approx_kl"] += masked_mean(0.5 * log_ratio**2, row_mask)
                micro_batches_seen += 1
            grad_norm_sum += torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer_steps += 1
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    stats = {name: total / micro_batches_seen for name, total in totals.items()}
    stats["grad_norm"] = grad_norm_sum / max(optimizer_steps, 1)  # before clipping, like the Trainer's
    return stats
