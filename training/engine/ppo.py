"""PPO stage: optimise a policy against a reward (a reward model, rules, or both), kept near its parent by a KL penalty.

TRL 1.x dropped PPO, so this is our own, written as one loop (Ziegler et al. 2019; Stiennon et al. 2020; Huang et
al., "The N Implementation Details of RLHF with PPO", 2024). One PPO *iteration* (= one `step` of the stage), in
three modules: this one (config, the loop, checkpoints, the artifact), `ppo_rollout.py` (rollout to advantages)
and `ppo_update.py` (the clipped updates):

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

On several processes (`processes` > 1, torchrun through launcher.py, see distributed.py) each rank takes its share
of the iteration's prompts (`distributed.shard`), samples them with its own generator (seed + rank), and scores and
evaluates them alone; the reward and advantage whitening use the statistics of all ranks' tokens together, so they
equal one process's whitening of the whole batch. Each optimizer step averages the gradients (policy and critic)
over the ranks, so the weights stay the same everywhere; `batch_size` and `mini_batch_size` are global and must
split evenly. Metrics are global, rank 0 writes checkpoints (with every rank's sampling generator) and the artifact.

With `sharding` "fsdp" (or "auto" when the stage does not fit one device, `sharding.uses_fsdp`) the models are sharded
with FSDP2 instead of copied (`shard_models`): the policy and its critic (trained: weights, gradients and AdamW state
sharded; FSDP reduce-scatters the gradients, so no `average_gradients`), and the frozen reference copy of a full
fine-tune and the reward model too: each is as large as the policy's weights, so a replicated copy on every process
would take back most of what sharding the policy saves (`memory.training_memory` plans all of them sharded). The
rollout decodes on the sharded policy with the growing cache: each decode step is a forward of the root, which gathers
one layer at a time and frees it after (a collective per layer and token, the same number of steps on every rank);
the static-cache CUDA-graph decoder stays off, as collectives cannot be captured in a graph. Checkpoints hold whole
tensors gathered onto rank 0 and a resume shards them again; the artifact is the whole policy (and critic).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from datasets import Dataset
from safetensors.torch import save_file

from training.engine import checkpoints, distributed, fast_paths, sharding
from training.engine.common import (
    Bounds,
    ModelRef,
    PhaseProgress,
    StageCancelled,
    StageConfig,
    StageInputs,
    StageResult,
    StepMetrics,
    check_finite_training,
    checkpoint_dir_for,
    pick_device,
    seed_everything,
    stop_if_asked,
    training_dtype,
    write_json,
)
from training.engine.finetuning_methods import (
    base_dtype_for,
    disabled_adapters,
    has_disableable_adapter,
    load_model_ref,
    prepare_model,
    resolve_model_ref,
    save_completed_stage,
    trainable_parameters,
)
from training.engine.generation import SamplingSettings
from training.engine.ppo_rollout import (
    AdaptiveKLController,
    PPOModels,
    SequenceScorer,
    ValueHead,
    collect_rollout,
    on_each_process,
    prompt_rows_for_iteration,
    rollout_metrics,
)
from training.engine.ppo_update import ppo_update
from training.engine.reward_rules import ReferenceExactRule, ReferenceRegexRule, RuleSpecError, parse_rules

STAGE_NAME = "ppo"
RewardSource = Literal["reward_model", "rules", "mixed"]
VALUE_HEAD_FILE = "value_head.safetensors"
METRICS_FILE = "metrics.json"
SAMPLING = "sampling"  # the rollouts' generator, one per rank


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
            "processes",
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
        if "mini_batch_size" not in errors and self.processes > 1 and self.mini_batch_size % self.processes:
            errors["mini_batch_size"] = (
                f"mini_batch_size ({self.mini_batch_size}) must split evenly over the {self.processes} processes: "
                "each optimizer step takes the same number of rollout rows on every process"
            )
        per_process_minibatch = self.mini_batch_size // self.processes
        if "mini_batch_size" not in errors and self.gradient_accumulation_steps > per_process_minibatch:
            on_several = f" / processes ({self.processes})" if self.processes > 1 else ""
            errors["gradient_accumulation_steps"] = (
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) cannot be larger than "
                f"mini_batch_size ({self.mini_batch_size}){on_several}"
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
    sharded: bool = False,
) -> checkpoints.Checkpoint:
    """Everything a resume needs after `iteration` completed iterations, copied to the CPU.

    Taken at the start of each iteration, so a cancel in the middle of the next one (its updates change the
    weights in place) still saves the state of the last completed iteration. It costs one copy of the trainable
    parameters and their optimizer state per iteration (small with LoRA or an adapter), only with checkpoints on.
    Every rank calls it: on several processes the ranks' sampling generators differ, and rank 0, which writes the
    checkpoint, keeps all of them (`generator.sampling.rank<r>` beside its own `generator.sampling`). `sharded`
    (FSDP): the parameters and the optimizer's state are gathered whole onto rank 0, the layout of one process
    (every iteration, like the copy: a full fine-tune pays one gather of its model and AdamW state per iteration).
    """
    parameters, optimizer_state = sharding.whole_training_state(  # sharded: every rank gathers, rank 0 keeps
        trained_parameters(policy, value_head), optimizer, sharded=sharded
    )
    checkpoint = checkpoints.capture(
        iteration,
        parameters=parameters,
        optimizer=optimizer,
        optimizer_state=optimizer_state,
        generators=generators,
        # the history, so that the artifact's metrics.json covers the whole run after a resume
        stage_state={"kl_coef": kl_controller.coef, "history": list(history)},
    )
    sampling_states = distributed.gather_from_ranks(checkpoint.tensors[f"generator.{SAMPLING}"])
    for rank, state in enumerate(sampling_states[1:], start=1):
        checkpoint.tensors[f"generator.{sampling_generator_key(rank)}"] = state
    return checkpoint


def sampling_generator_key(rank: int) -> str:
    """The name of a rank's sampling generator in a checkpoint (rank 0's is that of a one-process run)."""
    return SAMPLING if rank == 0 else f"{SAMPLING}.rank{rank}"


def restore_generators(checkpoint: checkpoints.Checkpoint, generators: dict, seed: int) -> None:
    """This rank's generators from `checkpoint`. A rank the checkpoint has no sampling state for (it was written
    by fewer processes) samples on from a seed of its own and the iteration instead."""
    key = sampling_generator_key(distributed.rank())
    if f"generator.{key}" in checkpoint.tensors:
        checkpoint.restore_rng(generators)
        generators[SAMPLING].set_state(checkpoint.tensors[f"generator.{key}"])
        return
    checkpoint.restore_rng({name: value for name, value in generators.items() if name != SAMPLING})
    generators[SAMPLING].manual_seed((seed + distributed.rank()) * 1_000_003 + checkpoint.step)


def trained_parameters(policy, value_head) -> dict[str, torch.nn.Parameter]:
    return {
        **{f"policy.{name}": parameter for name, parameter in trainable_parameters(policy).items()},
        **{f"value_head.{name}": parameter for name, parameter in value_head.named_parameters()},
    }


# ----------------------------------------------------------------------------------------------------------------
# The stage


def load_models(config: PPOConfig, inputs: StageInputs, device) -> PPOModels:
    """The policy (fp32 master weights; on CUDA its passes run under bf16 autocast), its critic, its reference and
    the scorer's reward model."""
    policy, tokenizer = load_model_ref(
        inputs.base, device, task="causal_lm", dtype=base_dtype_for(device, config.peft)
    )
    policy = prepare_model(policy, config.peft).eval()
    value_head = ValueHead(policy.config.hidden_size).to(device)
    # A bottleneck adapter continued from a parent adapter artifact: disabling it would give the grandparent,
    # so the reference is then a separate frozen copy of the parent, like with full fine-tuning.
    parent_has_adapter = resolve_model_ref(inputs.base).adapter_path is not None
    if has_disableable_adapter(policy) and not (config.peft.method == "adapter" and parent_has_adapter):
        reference, reference_context = policy, lambda: disabled_adapters(policy)
    else:
        reference, _ = load_model_ref(inputs.base, device, task="causal_lm", dtype=training_dtype(device))
        reference = reference.eval().requires_grad_(False)
        reference_context = nullcontext
    reward_model = None
    if config.reward_source in ("reward_model", "mixed"):
        model, reward_tokenizer = load_model_ref(
            inputs.reward_model, device, task="reward", dtype=training_dtype(device)
        )
        reward_model = (model.eval().requires_grad_(False), reward_tokenizer)
    scorer = SequenceScorer(config, reward_model, device)
    return PPOModels(policy, value_head, reference, reference_context, tokenizer, scorer)


def shard_models(models: PPOModels, device) -> None:
    """FSDP2 over the processes, in place (see the module's docstring for why the frozen models too): the policy,
    the critic as a group of its own, the reference when it is a separate copy, and the reward model. Before the
    optimizer is built: sharding replaces the parameters with sharded ones."""
    sharding.shard_model(models.policy, device)
    sharding.shard_head(models.value_head)
    if models.reference is not models.policy:
        sharding.shard_model(models.reference, device)
    if models.scorer.reward_model is not None:
        sharding.shard_model(models.scorer.reward_model, device)


def run(config: PPOConfig, inputs: StageInputs) -> StageResult:
    out_dir = Path(inputs.out_dir)
    if out_dir.exists():
        # Found now rather than when the finished artifact is moved into place, after all the training.
        raise FileExistsError(f"{out_dir} already exists; artifacts are immutable")
    check_inputs(inputs.data, config, inputs.reward_model)
    seed_everything(config.seed)
    device = pick_device(config.device)
    checkpoint_dir = checkpoint_dir_for(out_dir)
    models = load_models(config, inputs, device)
    sharded = sharding.uses_fsdp(config, models.policy, device, kind=STAGE_NAME)
    if sharded:
        shard_models(models, device)

    parameters = list(trained_parameters(models.policy, models.value_head).values())
    # eps 1e-5 as in OpenAI's and TRL's PPO: Adam's default 1e-8 makes early updates of tiny-gradient weights large.
    optimizer = fast_paths.adamw(parameters, device, lr=config.learning_rate, eps=1e-5, weight_decay=0.0)
    kl_controller = AdaptiveKLController(config.init_kl_coef, config.kl_target, config.kl_horizon)
    # Each rank samples its own prompts with its own stream; the minibatch shuffle is the same on every rank.
    sampling_generator = torch.Generator(device=device).manual_seed(config.seed + distributed.rank())
    shuffle_generator = torch.Generator().manual_seed(config.seed + 1)
    generators = {SAMPLING: sampling_generator, "shuffle": shuffle_generator}

    start_iteration, history = 0, []
    if (path := checkpoints.latest(checkpoint_dir)) is not None:
        checkpoint = checkpoints.read(path)
        trained = trained_parameters(models.policy, models.value_head)
        sharding.restore_training_state(checkpoint, trained, optimizer, sharded=sharded)
        restore_generators(checkpoint, generators, config.seed)
        kl_controller.coef = checkpoint.stage_state["kl_coef"]
        start_iteration, history = checkpoint.step, checkpoint.stage_state["history"]

    boundary = None  # the state after the last completed iteration, for a checkpoint on cancel
    saved_iteration = start_iteration
    try:
        for iteration in range(start_iteration, config.max_steps):
            if config.checkpoint_every > 0:
                boundary = capture_iteration(
                    iteration,
                    models.policy,
                    models.value_head,
                    optimizer,
                    kl_controller,
                    generators,
                    history,
                    sharded,
                )
                if iteration > start_iteration and iteration % config.checkpoint_every == 0:
                    checkpoints.write(checkpoint_dir, boundary)
                    saved_iteration = iteration
            stop_if_asked(inputs.should_stop)
            step = iteration + 1
            rows = prompt_rows_for_iteration(inputs.data, iteration, config.batch_size, config.seed)
            rank_rows = distributed.shard(rows)  # the whole batch on one process
            rollout = collect_rollout(
                models,
                config,
                rank_rows,
                kl_controller.coef,
                step,
                sampling_generator,
                inputs.on_progress,
                inputs.should_stop,
                device,
            )
            detail = (
                f"{config.ppo_epochs} epoch(s) over {len(rank_rows)} rollouts{on_each_process()}, "
                f"{rollout.tokens} tokens each epoch"
            )
            inputs.on_progress(
                PhaseProgress(step, config.max_steps, "update", detail, rollout.tokens * config.ppo_epochs)
            )
            update_stats = ppo_update(
                models, optimizer, parameters, rollout, config, shuffle_generator, inputs.should_stop, device
            )

            # One host sync for all metrics of this iteration.
            device_metrics = {**rollout_metrics(rollout), **update_stats}
            names = list(device_metrics)
            read_back = torch.stack([device_metrics[name].float() for name in names]).tolist()
            # Global: the row means are averaged over the ranks' equal shares (the whitened statistics already are).
            values = distributed.mean_over_ranks(dict(zip(names, read_back, strict=True)))
            values["kl_coef"] = kl_controller.coef
            kl_controller.update(values["kl"], len(rows))
            history.append({"step": step, **values})
            inputs.on_progress(StepMetrics(step=step, total_steps=config.max_steps, values=values))
            check_finite_training(values, step=step, learning_rate=config.learning_rate)
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
    policy = models.policy
    if sharded:
        # Every rank gathers; rank 0 gets the whole policy (a plain model) and critic, the others None and {}.
        policy = sharding.unsharded_model(policy, config, inputs.base, "causal_lm")
        critic = sharding.full_model_state(models.value_head)
    else:
        critic = models.value_head.state_dict()

    def write_critic_and_history(staging: Path) -> None:
        # The critic is not part of the policy; kept beside it so a later PPO stage can warm-start its values.
        save_file(
            {key: value.detach().cpu().contiguous() for key, value in critic.items()},
            str(staging / VALUE_HEAD_FILE),
        )
        write_json(staging / METRICS_FILE, {"final": final_metrics, "history": history})

    return save_completed_stage(
        policy,
        models.tokenizer,
        config,
        inputs,
        stage=STAGE_NAME,
        metrics=final_metrics,
        steps_completed=config.max_steps,
        write_more=write_critic_and_history,
    )
