"""PPO's rollout and advantages: the rollout, score, evaluate, reward and GAE rows of ppo.py's iteration table.

`collect_rollout` samples one completion per prompt (generation.py), scores it (reward model and/or rules), takes
the policy's old log-probs and values and the reference's log-probs, and turns the sequence scores and the KL into
per-token rewards, whitened advantages and returns. `should_stop` is asked before every forward pass (each decode
step, each scoring and reference pass), so a cancel lands within one pass; it raises StageCancelled, and nothing
here has changed any weight yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from datasets import Dataset
from torch import nn

from training.engine import distributed, sharding
from training.engine.common import PhaseProgress, ProgressCallback, StopCallback, stop_if_asked
from training.engine.finetuning_methods import autocast_for
from training.engine.generation import GeneratedBatch, generate, positions_from_mask
from training.engine.reward_model import score_texts
from training.engine.reward_rules import RuleReward

if TYPE_CHECKING:
    from training.engine.ppo import PPOConfig


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
        return self.linear(hidden_states.to(self.linear.weight.dtype)).squeeze(-1)  # a bf16 base's states


# ----------------------------------------------------------------------------------------------------------------
# Tensor helpers: masked statistics, per-token log-probs, GAE


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Unit variance over the masked entries; `shift_mean=False` keeps the mean (used for rewards, see below).

    On several processes the mean and variance are those of all ranks' entries together (every rank calls it at
    the same point): each rank whitens its share exactly as one process would whiten the whole global batch."""
    mean, variance = distributed.masked_moments(values, mask)
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

    def __init__(self, config: PPOConfig, reward_model: tuple | None, device):
        """`reward_model`: (model, tokenizer), frozen, when the source uses one."""
        self.config = config
        self.device = device
        self.rule_reward = RuleReward(config.rules) if config.reward_source in ("rules", "mixed") else None
        self.reward_model, self.reward_tokenizer = reward_model or (None, None)

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
# One rollout


@dataclass
class PPOModels:
    """What an iteration runs: the policy and its critic, the frozen reference, the tokenizer, the scorer."""

    policy: nn.Module
    value_head: ValueHead
    reference: nn.Module  # the policy itself with LoRA or an adapter (run inside `reference_context`)
    reference_context: Callable  # () -> context manager in which `reference` is the parent
    tokenizer: object
    scorer: SequenceScorer


@dataclass
class Rollout:
    """One iteration's scored completions with everything the update needs (all on the device, [rows, tokens])."""

    rows: list[dict]
    batch: GeneratedBatch
    scores: torch.Tensor  # [rows] sequence scores
    score_parts: dict[str, torch.Tensor]  # mean score per source
    mask: torch.Tensor  # completion tokens, as floats
    old_log_probs: torch.Tensor
    old_values: torch.Tensor
    kl_per_token: torch.Tensor  # log π_old − log π_ref
    kl_penalty: torch.Tensor  # −β · kl_per_token
    advantages: torch.Tensor  # whitened
    returns: torch.Tensor
    tokens: int  # prompt + completion tokens (from shapes: no sync)


def collect_rollout(
    models: PPOModels,
    config: PPOConfig,
    rows: list[dict],
    kl_coef: float,
    step: int,
    sampling_generator: torch.Generator,
    on_progress: ProgressCallback,
    should_stop: StopCallback,
    device,
) -> Rollout:
    """Sample, score and evaluate one completion per row, then turn scores and KL into advantages and returns.

    On several processes `rows` is this rank's share of the global batch; sampling, scoring and evaluation stay
    on the rank, and only the whitening (and the end of decoding) is decided over all ranks."""
    sampling = config.sampling
    if sharding.is_sharded(models.policy):
        # Decoding on the sharded policy: each step's forward gathers the layers one by one (collectives, which a
        # CUDA graph cannot hold), so the growing cache in eager mode, on CUDA too.
        sampling = dataclasses.replace(sampling, decode="dynamic")
    detail = f"{len(rows)} prompts{on_each_process()}, up to {sampling.max_new_tokens} new tokens each"
    on_progress(PhaseProgress(step, config.max_steps, "rollout", detail, len(rows) * sampling.max_new_tokens))
    with autocast_for(device):
        batch = generate(
            models.policy,
            models.tokenizer,
            [row["prompt"] for row in rows],
            sampling,
            sampling_generator,
            should_stop,
            all_finished=lambda finished: distributed.all_ranks_agree(bool(finished.all()), device),
        )
    tokens = len(rows) * (batch.prompt_ids.shape[1] + batch.completion_ids.shape[1])  # shapes: no sync
    detail = f"{len(rows)} completions{on_each_process()}, {tokens} tokens with their prompts"
    on_progress(PhaseProgress(step, config.max_steps, "scoring", detail, tokens))
    scores, score_parts = models.scorer.score(rows, batch.texts, should_stop)
    if config.missing_eos_penalty is not None:
        scores = scores - config.missing_eos_penalty * (~batch.ended_with_eos).float()

    old_log_probs, old_values, reference_log_probs = evaluate_rollout(
        models, batch, config, device, should_stop
    )
    mask = batch.completion_mask.float()

    # Per-token reward: the KL penalty everywhere, the sequence score on the last token.
    kl_per_token = (old_log_probs - reference_log_probs) * mask
    kl_penalty = -kl_coef * kl_per_token
    rewards = kl_penalty.clone()
    rewards[torch.arange(len(rows), device=device), batch.completion_lengths - 1] += scores
    if config.whiten_rewards:
        # Scale only: shifting the mean would add a constant per-token reward, i.e. a length bonus/penalty.
        rewards = masked_whiten(rewards, mask, shift_mean=False)

    # Advantages and returns (GAE), advantages whitened per (global) rollout.
    advantages, returns = generalized_advantages(rewards, old_values, mask, config.gamma, config.lam)
    return Rollout(
        rows=rows,
        batch=batch,
        scores=scores,
        score_parts=score_parts,
        mask=mask,
        old_log_probs=old_log_probs,
        old_values=old_values,
        kl_per_token=kl_per_token,
        kl_penalty=kl_penalty,
        advantages=masked_whiten(advantages, mask),
        returns=returns,
        tokens=tokens,
    )


@torch.no_grad()
def evaluate_rollout(
    models: PPOModels,
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
                models.policy,
                models.value_head,
                sequence_ids[rows],
                sequence_mask[rows],
                width,
                config.temperature,
            )
            stop_if_asked(should_stop)
            with models.reference_context():
                ref_log_probs, _, _ = completion_forward(
                    models.reference, None, sequence_ids[rows], sequence_mask[rows], width, config.temperature
                )
        old_log_probs.append(log_probs)
        old_values.append(values)
        reference_log_probs.append(ref_log_probs)
    return torch.cat(old_log_probs), torch.cat(old_values), torch.cat(reference_log_probs)


def on_each_process() -> str:
    """What a phase's detail adds on several processes: its counts are one rank's (rank 0 reports)."""
    processes = distributed.world_size()
    return f" on each of {processes} processes" if processes > 1 else ""


def rollout_metrics(rollout: Rollout) -> dict[str, torch.Tensor]:
    """The iteration's rollout statistics, still on the device (read back with the update's in one sync).

    On several processes the reward's mean and spread and the token means are already over all ranks; the rest
    are this rank's means over its rows, which ppo.py averages over the (equally large) shares."""
    mask = rollout.mask
    reward_mean, reward_variance = distributed.masked_moments(rollout.scores, torch.ones_like(rollout.scores))
    return {
        "reward_mean": reward_mean,
        "reward_std": reward_variance.sqrt(),
        "kl": rollout.kl_per_token.sum(dim=1).mean(),
        "kl_penalty_mean": rollout.kl_penalty.sum(dim=1).mean(),
        "completion_length": mask.sum(dim=1).mean(),
        "eos_fraction": rollout.batch.ended_with_eos.float().mean(),
        "value_mean": distributed.masked_moments(rollout.old_values, mask)[0],
        "return_mean": distributed.masked_moments(rollout.returns, mask)[0],
        **{f"{name}_mean": value for name, value in rollout.score_parts.items()},
    }
