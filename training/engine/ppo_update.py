"""PPO's update: `ppo_epochs` passes over shuffled minibatches of one rollout (see ppo.py for the whole loop).

    policy loss  = mean max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)),    ρ = π_θ / π_old per token
    value loss   = ½·mean max((V_θ − R)², (clip(V_θ, V_old ± ε_v) − R)²)
    loss         = policy loss + c_v·value loss

A minibatch is one optimizer step, split into `gradient_accumulation_steps` micro-batches (the same step as the
whole minibatch at once: each micro-batch's loss counts by its share of the tokens); `should_stop` is asked before
each micro-batch. On several processes each rank updates on its own rollout rows, `mini_batch_size` / processes
of them per step, and the gradients are averaged over the ranks before clipping, so every rank takes the same step
(what DDP would do); a sharded policy and critic (FSDP) have their gradients reduce-scattered by their backward pass
instead, and are clipped by the norm of the whole gradient over the shards. The updates change the weights in place,
so ppo.py keeps a copy of the state at the iteration's start for the checkpoint a cancel saves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from training.engine import distributed, sharding
from training.engine.common import StopCallback, stop_if_asked
from training.engine.finetuning_methods import autocast_for
from training.engine.ppo_rollout import PPOModels, Rollout, completion_forward, masked_mean

if TYPE_CHECKING:
    from training.engine.ppo import PPOConfig


def ppo_update(
    models: PPOModels,
    optimizer,
    parameters: list[torch.nn.Parameter],
    rollout: Rollout,
    config: PPOConfig,
    shuffle_generator: torch.Generator,
    should_stop: StopCallback,
    device,
) -> dict[str, torch.Tensor]:
    """`ppo_epochs` passes of clipped-surrogate + clipped-value updates; returns device-side mean statistics."""
    policy, value_head = models.policy, models.value_head
    mask, advantages, returns = rollout.mask, rollout.advantages, rollout.returns
    old_log_probs, old_values = rollout.old_log_probs, rollout.old_values
    sequence_ids, sequence_mask = rollout.batch.sequence_ids, rollout.batch.sequence_mask
    width = rollout.batch.completion_ids.shape[1]
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
    minibatch_size = distributed.per_process_batch(config.mini_batch_size)  # the config check makes it divide
    sharded = sharding.is_sharded(policy)
    for _ in range(config.ppo_epochs):
        order = torch.randperm(rollout_size, generator=shuffle_generator).to(device)
        for minibatch in order.split(minibatch_size):
            micro_batches = minibatch.tensor_split(min(config.gradient_accumulation_steps, len(minibatch)))
            # Each micro-batch's token means weighted by its share of the minibatch's tokens: the accumulated
            # gradient is the whole minibatch's token mean, whatever the accumulation (the launch raises it where
            # a stage fits only in smaller micro-batches). Stays on the device: no sync.
            minibatch_tokens = mask[minibatch].sum().clamp(min=1)
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
                (loss * (row_mask.sum() / minibatch_tokens)).backward()

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
            if not sharded:  # FSDP's backward reduce-scattered the mean already
                distributed.average_gradients(
                    parameters
                )  # the global gradient: clipped and stepped alike everywhere
            grad_norm_sum += sharding.clip_grad_norm(parameters, config.max_grad_norm)
            optimizer_steps += 1
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    stats = {name: total / micro_batches_seen for name, total in totals.items()}
    stats["grad_norm"] = grad_norm_sum / max(optimizer_steps, 1)  # before clipping, like the Trainer's
    return stats
