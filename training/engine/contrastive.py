"""Contrastive preference stage: DPO or CPO loss on (chosen, rejected), with per-domain LoRA experts and a router.

This is the seed's "CoCoMix" read as it describes it: learn from good vs bad responses with a contrastive loss, and
mix experts. (The published CoCoMix paper is a different, pretraining method; see docs/engine.md.)

- loss="dpo": −log σ(β·[(log π(c) − log π(r)) − (log π_ref(c) − log π_ref(r))])  (TRL's "sigmoid" DPO loss)
- loss="cpo": −log σ(β·(log π(c) − log π(r))) + α·NLL(c)  (TRL's CPO: no reference model, plus a chosen-SFT term)

With `peft.method == "lora"` the policy is a mixture of LoRA experts, one per value of the rows' `domain` column
(one expert when there is no such column or a single domain). A small router — a linear layer over the mean-pooled
prompt token embeddings, softmax over experts — gives each sample its mixing weights, and every target Linear adds
Σ_e w_e · B_e A_e x to its output (`lora_mixture.py`). The router learns jointly from the preference loss and an auxiliary
domain-classification loss, so different domains are routed to different experts. "full" and "adapter" train the
plain model with the same losses.

Why our own loop and not TRL's DPOTrainer / experimental CPOTrainer: the mixture needs per-sample routing computed
from the prompt before the forward pass and an extra router loss in the same step, which neither trainer exposes;
one readable loop keeps one code path for one or many experts and for both losses.

On several processes the models are copies (DDP: the gradients averaged over the ranks) or sharded with FSDP2
(`sharding.py`, `StageConfig.sharding`): the policy, and the frozen reference copy of a full fine-tune; the
LoRA mixture's experts sit in the base's sharded layers, its router in the root's group. FSDP averages the gradients
itself (reduce-scatter); checkpoints hold whole tensors gathered onto rank 0 and the artifact is written whole.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn

from training.engine import checkpoints, distributed, fast_paths, sharding
from training.engine.common import (
    STAGE_MANIFEST,
    Bounds,
    ModelRef,
    StageConfig,
    StageInputs,
    StageResult,
    StepMetrics,
    check_finite_training,
    checkpoint_dir_for,
    pick_device,
    seed_everything,
    staged_output,
    write_json,
)
from training.engine.data import conversation_text, preference_pairs, prompt_text
from training.engine.finetuning_methods import (
    autocast_for,
    base_dtype_for,
    disabled_adapters,
    load_model_ref,
    prepare_model,
    resolve_model_ref,
    save_completed_stage,
    trainable_parameters,
)
from training.engine.lora_mixture import MixtureOfLoraExperts

STAGE_NAME = "contrastive"
NO_DOMAIN = "default"


@dataclass
class ContrastiveStageConfig(StageConfig):
    learning_rate: float = 5e-5
    loss: Literal["dpo", "cpo"] = "dpo"
    beta: float = 0.1
    cpo_alpha: float = 1.0  # weight of CPO's negative log-likelihood term on the chosen response
    router_loss_weight: float = 0.5  # weight of the auxiliary domain-classification loss of the router
    log_every: int = 1  # optimizer steps between progress reports

    LIMITS: ClassVar[dict[str, Bounds]] = {
        "beta": Bounds(0, 100, low_open=True),
        "cpo_alpha": Bounds(0, 100),
        "router_loss_weight": Bounds(0, 100),
    }


def load_policy(path: Path, device="cpu"):
    """The policy this stage wrote (any layout), in eval mode, with its tokenizer; same as `finetuning_methods.load_model_ref`."""
    model, tokenizer = load_model_ref(ModelRef(Path(path)), device)
    return model.eval(), tokenizer


# --- data -------------------------------------------------------------------------------------------------------


def tokenize_pairs(tokenizer, pairs: Dataset, max_length: int, domains: list[str]) -> list[dict]:
    """Token ids of prompt+chosen and prompt+rejected, the prompt length, and the domain index of each pair."""
    examples = []
    for row in pairs:
        prompt_ids = tokenizer(prompt_text(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"]
        example = {
            "prompt_length": min(len(prompt_ids), max_length - 1),
            "domain": domains.index(row.get("domain") or NO_DOMAIN) if len(domains) > 1 else 0,
        }
        for side in ("chosen", "rejected"):
            ids = tokenizer(conversation_text(tokenizer, row["prompt"], row[side]), add_special_tokens=False)[
                "input_ids"
            ]
            example[side] = ids[:max_length]
        examples.append(example)
    return examples


def collate(
    examples: list[dict], pad_token_id: int, device, pad_to_multiple_of: int = 1
) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, right-padded (to a multiple of `pad_to_multiple_of` columns: fewer distinct
    shapes for compiled layers); completion_mask marks the response tokens to score."""
    sequences = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    lengths = torch.tensor([len(s) for s in sequences])
    prompt_lengths = torch.tensor([e["prompt_length"] for e in examples] * 2)
    width = -(-int(lengths.max()) // pad_to_multiple_of) * pad_to_multiple_of
    # Whole-batch masks from the lengths, and the tokens written in one assignment (row-major order is the
    # sequences' order): a few ops per batch, where row-by-row writes were a few per row, on the training loop's
    # critical path (a GPU step waits for its CPU-side launches).
    columns = torch.arange(width)
    real = columns < lengths[:, None]
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    input_ids[real] = torch.tensor([token for sequence in sequences for token in sequence], dtype=torch.long)
    batch = {
        "input_ids": input_ids,
        "attention_mask": real.long(),
        "completion_mask": (real & (columns >= prompt_lengths[:, None])).long(),
        "prompt_mask": (columns < prompt_lengths[:, None]).long(),
        "domain": torch.tensor([e["domain"] for e in examples] * 2),
    }
    # found here, on the CPU: on the GPU their count would be a host sync in every scoring pass
    batch["scored_positions"] = fast_paths.scored_positions_of(batch["completion_mask"])
    return fast_paths.to_device(batch, device)


def sequence_log_probs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log π(token) over each row's response tokens, and the mean token NLL (for CPO's SFT term).

    No attention mask: the rows are right-padded, so under the causal mask alone a real token never sees a pad
    (they all come after it) and its log-prob is the same as with the padding mask. Without a mask SDPA runs its
    causal flash kernel instead of the masked one; the pads' own outputs are never scored."""
    sums, counts = fast_paths.response_log_probs(
        model,
        batch["input_ids"],
        None,
        batch["completion_mask"],
        scored_positions=batch.get("scored_positions"),
    )
    return sums, -sums / counts.clamp(min=1)


# --- the stage --------------------------------------------------------------------------------------------------


class Policy:
    """The model being trained, its frozen reference, and (with LoRA) its expert mixture, behind one interface."""

    def __init__(self, model, mixture: MixtureOfLoraExperts | None, reference_copy: nn.Module | None):
        self.model = model
        self.mixture = mixture
        self.reference_copy = reference_copy

    def shard(self, device) -> None:
        """FSDP2 over the processes: the policy, and the reference copy (frozen, gathered layer by layer as the
        policy is). Before `trainable()` is read: sharding replaces the parameters with sharded ones."""
        sharding.shard_model(self.model, device)
        if self.reference_copy is not None:
            sharding.shard_model(self.reference_copy, device)

    def trainable(self) -> dict[str, nn.Parameter]:
        return self.mixture.parameters() if self.mixture else trainable_parameters(self.model)

    def log_probs(self, batch):
        router_logits = (  # the router and the embeddings it pools are in the root's group under FSDP
            sharding.in_root_forward(
                self.model, self.mixture.set_route, batch["input_ids"], batch["prompt_mask"]
            )
            if self.mixture
            else None
        )
        log_probs, chosen_nll = sequence_log_probs(self.model, batch)
        return log_probs, chosen_nll, router_logits

    @torch.no_grad()
    def reference_log_probs(self, batch) -> torch.Tensor:
        if self.mixture:
            saved, self.mixture.routing.weights = self.mixture.routing.weights, None  # experts off = the base
            try:
                return sequence_log_probs(self.model, batch)[0]
            finally:
                self.mixture.routing.weights = saved
        if self.reference_copy is not None:
            return sequence_log_probs(self.reference_copy, batch)[0]
        with disabled_adapters(self.model):
            return sequence_log_probs(self.model, batch)[0]


def build_policy(
    config: ContrastiveStageConfig, base: ModelRef, domains: list[str], device
) -> tuple[Policy, object]:
    model, tokenizer = load_model_ref(
        base,
        device,
        task="causal_lm",
        dtype=base_dtype_for(device, config.peft),
        adapter_name=config.peft.adapter_name,
    )
    if config.peft.method == "lora":
        settings = config.peft
        mixture = MixtureOfLoraExperts(
            model, domains, settings.lora_r, settings.lora_alpha, settings.lora_target_modules
        )
        return Policy(model.to(device), mixture, None), tokenizer
    # The reference must be the parent: a frozen copy for full training; with an adapter, the base with the adapter
    # switched off (exact when the adapter is new; a continued adapter's parent lives in its own stage artifact).
    reference_copy = (
        copy.deepcopy(model).eval().requires_grad_(False) if config.peft.method == "full" else None
    )
    model = prepare_model(model, config.peft)
    return Policy(model, None, reference_copy), tokenizer


def preference_loss(
    config: ContrastiveStageConfig, policy_log_probs, reference_log_probs, chosen_nll, batch_size
):
    policy_chosen, policy_rejected = policy_log_probs[:batch_size], policy_log_probs[batch_size:]
    if config.loss == "dpo":
        reference_chosen, reference_rejected = (
            reference_log_probs[:batch_size],
            reference_log_probs[batch_size:],
        )
        logits = config.beta * ((policy_chosen - policy_rejected) - (reference_chosen - reference_rejected))
        return -F.logsigmoid(logits).mean()
    if config.loss == "cpo":
        contrastive = -F.logsigmoid(config.beta * (policy_chosen - policy_rejected)).mean()
        return contrastive + config.cpo_alpha * chosen_nll[:batch_size].mean()
    raise ValueError(f"unknown contrastive loss {config.loss!r}; use 'dpo' or 'cpo'")


def batch_losses(config: ContrastiveStageConfig, policy: Policy, batch, pairs: int, several_domains: bool):
    """(preference loss, router loss, policy log-probs of the rows) of one collated batch of `pairs` pairs."""
    device = batch["input_ids"].device
    with autocast_for(device):
        reference = policy.reference_log_probs(batch) if config.loss == "dpo" else None
        log_probs, chosen_nll, router_logits = policy.log_probs(batch)
    loss = preference_loss(config, log_probs, reference, chosen_nll, pairs)
    router_loss = torch.zeros((), device=device)
    if router_logits is not None and several_domains:
        router_loss = F.cross_entropy(router_logits.float(), batch["domain"])
    return loss, router_loss, log_probs


def raise_if_diverged(divergence, learning_rate: float) -> None:
    step, loss, router_loss = divergence
    if step:  # no update after it has been saved: the caller stops the stage before writing anything
        check_finite_training(
            {"loss": loss, "router_loss": router_loss}, step=int(step), learning_rate=learning_rate
        )


class MetricWindow:
    """The stage's metrics over the micro-batches since the last report, kept on the device, and the first step
    whose loss was not finite (0: none yet)."""

    NAMES = ("loss", "router_loss", "log_prob_margin", "preference_accuracy")

    def __init__(self, device):
        self.sums = torch.zeros(len(self.NAMES), device=device)
        self.count = 0
        # [first non-finite step, its loss, its router loss]
        self.divergence = torch.zeros(3, device=device)

    def add(self, step: int, loss, router_loss, log_probs, pairs: int) -> None:
        loss, router_loss = loss.detach().float(), router_loss.detach().float()
        margin = (log_probs[:pairs] - log_probs[pairs:]).detach().float()
        values = torch.stack([loss, router_loss, margin.mean(), (margin > 0).float().mean()])
        self.sums += values
        self.count += 1
        first = (self.divergence[0] == 0) & ~torch.isfinite(loss + router_loss)
        # torch.full, not a tensor built on the CPU: copying one to the GPU would wait for the queue to drain
        seen = torch.stack([torch.full_like(loss, step), loss, router_loss])
        self.divergence = torch.where(first, seen, self.divergence)

    def raise_if_diverged(self, learning_rate: float) -> None:
        raise_if_diverged(self.divergence.tolist(), learning_rate)

    def snapshot_and_reset(self, step: int) -> WindowSnapshot:
        """The means and the divergence record as they will be once the queued work is done, copied towards the
        host without waiting for it; the window starts again."""
        values = torch.cat([self.sums / max(1, self.count), self.divergence])
        # a new tensor: the copy above may not have read the old one yet
        self.sums = torch.zeros_like(self.sums)
        self.count = 0
        return WindowSnapshot(step, values)


class WindowSnapshot:
    """One report's values on their way to the host. On CUDA the copy goes into pinned memory behind the work
    already queued, and `read` waits for that copy alone; the stage reads it one step later, once the next step
    is queued, so the GPU has work while the CPU waits and no report drains the queue."""

    def __init__(self, step: int, values: torch.Tensor):
        self.step = step
        self.ready = None
        if values.device.type == "cuda":
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.host = values.detach().clone()

    def read(self) -> tuple[tuple[float, float, float], dict[str, float]]:
        """(the divergence record [first non-finite step or 0, its loss, its router loss], the metric means)."""
        if self.ready is not None:
            self.ready.synchronize()
        values = self.host.tolist()
        means, divergence = values[: len(MetricWindow.NAMES)], values[len(MetricWindow.NAMES) :]
        return tuple(divergence), dict(zip(MetricWindow.NAMES, means, strict=True))


def run(config: ContrastiveStageConfig, inputs: StageInputs) -> StageResult:
    seed_everything(config.seed)
    device = pick_device(config.device)
    pairs = preference_pairs(inputs.data)
    domains = sorted(set(pairs["domain"])) if "domain" in pairs.column_names else [NO_DOMAIN]
    policy, tokenizer = build_policy(config, inputs.base, domains, device)
    sharded = sharding.uses_fsdp(config, policy.model, device, kind=STAGE_NAME)
    if sharded:
        policy.shard(device)
    if (
        config.gradient_checkpointing
    ):  # only the trained policy's layers: the reference runs without gradients
        policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    examples = tokenize_pairs(tokenizer, pairs, config.max_length, domains)
    # Compiled layers on CUDA, as SFT and the reward model; not under FSDP (its gathers stay outside compiled code).
    if fast_paths.use_compiled_layers(config, device) and not sharded:
        for model in (policy.model, policy.reference_copy):
            if model is not None:
                fast_paths.compile_decoder_layers(model)
    trainable = policy.trainable()
    optimizer = fast_paths.adamw(list(trainable.values()), device, lr=config.learning_rate, weight_decay=0.0)

    checkpoint_dir = checkpoint_dir_for(inputs.out_dir)
    step = 0
    if (path := checkpoints.latest(checkpoint_dir)) is not None:
        checkpoint = checkpoints.read(path)
        # sharded: each rank takes its shard of the whole saved tensors
        sharding.restore_training_state(checkpoint, trainable, optimizer, sharded=sharded)
        checkpoint.restore_rng()
        step = checkpoint.step
    start_step = step

    def save_checkpoint() -> None:
        # sharded: every rank gathers; rank 0 writes the whole tensors
        parameters, optimizer_state = sharding.whole_training_state(trainable, optimizer, sharded=sharded)
        checkpoint = checkpoints.capture(
            step, parameters=parameters, optimizer=optimizer, optimizer_state=optimizer_state
        )
        checkpoints.write(checkpoint_dir, checkpoint)

    batch_size = min(config.batch_size, len(examples))
    batches_per_epoch = max(1, len(examples) // batch_size)
    policy.model.train()
    metrics: dict[str, float] = {}
    # Metrics are summed on the device and a NaN is looked for in them at each report and before any checkpoint:
    # a read per step would make the CPU wait for the GPU every step instead of queueing ahead. A report is sent
    # one step late, once the next step is queued (`WindowSnapshot`), so even `log_every=1` never drains it.
    window = MetricWindow(device)
    pending: WindowSnapshot | None = None

    def send_pending_report() -> None:
        nonlocal pending, metrics
        if pending is None:
            return
        divergence, values = pending.read()
        raise_if_diverged(divergence, config.learning_rate)
        metrics = distributed.mean_over_ranks(values)
        inputs.on_progress(StepMetrics(step=pending.step, total_steps=config.max_steps, values=metrics))
        pending = None

    def cancelled() -> StageResult:
        # No NaN is saved, the last finished step's report is sent, and the weights and optimizer are those of the
        # last completed step (a half-accumulated one is dropped).
        window.raise_if_diverged(config.learning_rate)
        send_pending_report()
        if config.checkpoint_every > 0 and step > start_step:
            save_checkpoint()
        return StageResult(status="cancelled", artifact_path=None, metrics=metrics, steps_completed=step)

    while step < config.max_steps:
        if step > start_step and inputs.should_stop():  # after each step (the finished last one is kept)
            return cancelled()
        if config.checkpoint_every > 0 and step > start_step and step % config.checkpoint_every == 0:
            window.raise_if_diverged(config.learning_rate)
            save_checkpoint()
        optimizer.zero_grad(set_to_none=True)
        for micro_step in range(config.gradient_accumulation_steps):
            if micro_step > 0 and inputs.should_stop():  # between micro-batches
                return cancelled()
            # The batch order depends only on (seed, step), so a resumed run sees the batches the first would have.
            index = step * config.gradient_accumulation_steps + micro_step
            epoch, position = divmod(index, batches_per_epoch)
            order = torch.randperm(
                len(examples), generator=torch.Generator().manual_seed(config.seed + epoch)
            )
            chosen = distributed.shard(order[position * batch_size : (position + 1) * batch_size].tolist())
            batch = collate([examples[i] for i in chosen], tokenizer.pad_token_id, device)
            loss, router_loss, log_probs = batch_losses(config, policy, batch, len(chosen), len(domains) > 1)
            total = (loss + config.router_loss_weight * router_loss) / config.gradient_accumulation_steps
            total.backward()
            window.add(step + 1, loss, router_loss, log_probs, len(chosen))
        if not sharded:  # FSDP's backward reduce-scattered the mean already
            distributed.average_gradients(trainable.values())  # several processes: DDP's mean over the ranks
        optimizer.step()
        step += 1

        send_pending_report()  # the previous step's, if it reported: done or nearly, with this step queued
        if step % config.log_every == 0 or step == config.max_steps:
            pending = window.snapshot_and_reset(step)
    send_pending_report()

    policy.model.eval()
    final = evaluate_margin(policy, examples, tokenizer.pad_token_id, device, batch_size)
    # a new dict: the last report's values are the caller's now
    metrics = {**metrics, **{f"final_{key}": value for key, value in final.items()}}
    if policy.mixture is None:
        model = policy.model
        if sharded:  # gathered whole onto rank 0 (None on the others, which write nothing)
            model = sharding.unsharded_model(
                model, config, inputs.base, "causal_lm", adapter_name=config.peft.adapter_name
            )
        return save_completed_stage(
            model, tokenizer, config, inputs, stage=STAGE_NAME, metrics=metrics, steps_completed=step
        )
    mixture_tensors = sharding.full_parameters(policy.trainable()) if sharded else None  # every rank gathers
    if not distributed.is_main_process():  # rank 0 writes the artifact
        return StageResult("completed", None, metrics, steps_completed=step)
    with staged_output(inputs.out_dir) as staging:
        policy.mixture.save(staging, mixture_tensors)
        tokenizer.save_pretrained(str(staging))
        write_json(
            staging / STAGE_MANIFEST,
            {
                "stage": STAGE_NAME,
                "peft": "lora",
                "layout": "lora_mixture",
                "base_path": str(Path(resolve_model_ref(inputs.base).path).resolve()),
                "base_name": inputs.base.name,
                "domains": domains,
                "config": config.to_dict(),
                "metrics": metrics,
            },
        )
    return StageResult(
        status="completed", artifact_path=Path(inputs.out_dir), metrics=metrics, steps_completed=step
    )


@torch.no_grad()
def evaluate_margin(policy: Policy, examples: list[dict], pad_token_id: int, device, batch_size: int) -> dict:
    """Mean chosen-over-rejected log-prob margin and how often it is positive, over `examples`."""
    margins = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        log_probs, _, _ = policy.log_probs(collate(chunk, pad_token_id, device))
        margins.append(log_probs[: len(chunk)] - log_probs[len(chunk) :])
    margin = torch.cat(margins)
    return {
        "log_prob_margin": float(margin.mean()),
        "preference_accuracy": float((margin > 0).float().mean()),
    }
