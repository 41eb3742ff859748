"""How much device memory a stage needs, stated before it starts (so a launch that cannot fit fails at once,
not with an out-of-memory error an hour in), and whether gradient checkpointing is needed to make it fit.

The estimate follows how our stages train: fp32 master weights (bf16 autocast on CUDA), AdamW's two fp32 moments
for the trained parameters, fp32 gradients for them; activations per token and layer as measured for transformer
blocks with fused (flash/SDPA) attention, about 34·h bytes in 16-bit (Korthikanti et al. 2022, table 2, without the
attention-matrix term that fused attention does not store), twice that in fp32 on a CPU; logits and their gradient
in fp32; with gradient checkpointing only each layer's input (2·h bytes a token in 16-bit) plus one layer's full
activations. Frozen models count with their weights only: a full fine-tune's reference copy (PPO's, loaded in bf16 on
CUDA; the contrastive stage's, an fp32 copy of the policy) and PPO's reward model (of the base's shape); with LoRA or
an adapter the reference is the policy with its adapter switched off, no copy (a PPO adapter continued from a parent
adapter keeps a reference copy that is not counted). PPO's critic is a linear head on the
policy's last hidden state; on CUDA PPO also keeps its rollout's static KV cache (see `training_memory`). Sharded (FSDP) stages shard all of these, frozen models included. It is a planning figure
(±30%), so the check keeps a margin.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
FITS_FRACTION = (
    0.9  # plan at most this share of the device; allocator fragmentation and CUDA context take the rest
)
# The stages that can recompute their layers' activations in the backward pass: the Trainer's two and the
# contrastive loop. PPO's loop does not: a PPO stage that cannot fit gets smaller micro-batches at launch (more
# gradient accumulation, services/capacity.py), or is refused with the numbers.
CHECKPOINTING_STAGES = ("sft", "reward", "contrastive")
DECODE_CACHE_MULTIPLE = 128  # decoders.CACHE_LENGTH_MULTIPLE (not imported: this module needs no torch)
ADAPTER_TRAINABLE_SHARE = 0.02  # LoRA r=16 / a bottleneck adapter: about 1-2% of a small model's parameters


@dataclass(frozen=True)
class ModelShape:
    num_parameters: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    # Width of one layer's keys (= values) per token: key/value heads × head size; 0: hidden_size (no GQA).
    key_value_size: int = 0

    @classmethod
    def from_config(cls, config: dict, num_parameters: int) -> ModelShape:
        text = config.get("text_config") or config  # multimodal configs nest the language model's
        return cls(
            num_parameters=num_parameters,
            hidden_size=int(text.get("hidden_size") or text.get("n_embd") or text.get("d_model") or 0),
            num_layers=int(
                text.get("num_hidden_layers") or text.get("n_layer") or text.get("num_layers") or 0
            ),
            vocab_size=int(text.get("vocab_size") or 0),
            key_value_size=_key_value_size(text),
        )


def _key_value_size(config: dict) -> int:
    heads = config.get("num_attention_heads") or config.get("n_head")
    key_value_heads = config.get("num_key_value_heads") or heads
    head_size = config.get("head_dim") or (int(config.get("hidden_size") or 0) // int(heads) if heads else 0)
    return int(key_value_heads or 0) * int(head_size or 0)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    gradient_checkpointing: bool
    decode_cache: int = 0  # PPO on CUDA: the rollout's static KV cache, kept on the policy between iterations

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.decode_cache

    def describe(self) -> str:
        parts = (
            f"weights {self.weights / GIB:.1f}",
            f"gradients {self.gradients / GIB:.1f}",
            f"optimizer {self.optimizer / GIB:.1f}",
            f"activations {self.activations / GIB:.1f}",
        ) + ((f"rollout KV cache {self.decode_cache / GIB:.1f}",) if self.decode_cache else ())
        checkpointing = " with gradient checkpointing" if self.gradient_checkpointing else ""
        return f"about {self.total / GIB:.1f} GiB{checkpointing} ({', '.join(parts)} GiB)"


@dataclass(frozen=True)
class StageLoad:
    """What a stage puts on one device, besides the model: its kind and method, and one micro-batch."""

    kind: str  # sft, reward, ppo, contrastive
    method: str  # full, lora, adapter
    micro_batch_rows: int
    sequence_tokens: int
    device_kind: str  # cuda, cpu, mps
    # Processes the weights, gradients and optimizer state are sharded over (FSDP, `sharding.py`); 1: a full copy.
    # The activations stay per process; the one layer gathered whole at a time is within the estimate's margin.
    model_shards: int = 1
    # PPO only: a reward model scores the rollouts (`reward_source` "reward_model" or "mixed"; "rules" loads none).
    reward_model: bool = True
    # PPO only: the rollout rows one process samples at once (its share of `batch_size`); 0: not counted.
    rollout_rows: int = 0


def micro_batch_rows(
    kind: str,
    *,
    batch_size: int,
    processes: int = 1,
    mini_batch_size: int | None = None,
    gradient_accumulation_steps: int = 1,
) -> int:
    """The rows of one process's largest training micro-batch: its share of the global micro-batch `batch_size`,
    or in PPO its share of an optimizer step's `mini_batch_size` rollout rows split into `gradient_accumulation_steps`
    (`ppo_update`: `tensor_split`, so the first pieces take the remainder)."""
    if kind == "ppo" and mini_batch_size is not None:
        per_process = max(1, mini_batch_size // processes)
        return -(-per_process // max(1, gradient_accumulation_steps))
    return max(1, batch_size // processes)


def training_memory(shape: ModelShape, load: StageLoad, *, gradient_checkpointing: bool) -> MemoryEstimate:
    """Peak memory of one training stage on one device."""
    params = shape.num_parameters
    trained = params if load.method == "full" else int(params * ADAPTER_TRAINABLE_SHARE)
    weights = 4 * params  # fp32 master weights; on CUDA the matmuls run under bf16 autocast
    if load.method != "full" and load.device_kind == "cuda":
        # LoRA / adapters: the frozen base is loaded in bf16 there (finetuning_methods.base_dtype_for).
        weights = 2 * params + 4 * trained
    if load.kind == "contrastive" and load.method == "full":
        weights += 4 * params  # the frozen reference: a copy of the fp32 policy (contrastive.build_policy)
    if load.kind == "ppo":
        # Frozen models are loaded in `training_dtype`: bf16 on CUDA, fp32 elsewhere (ppo.load_models).
        frozen_bytes = 2 if load.device_kind == "cuda" else 4
        if load.method == "full":
            weights += frozen_bytes * params  # the reference copy of the parent
        if load.reward_model:
            weights += frozen_bytes * params
        critic = shape.hidden_size + 1  # the value head: one linear output, trained in fp32
        weights += 4 * critic
        trained += critic
    # Pairwise stages run a chosen and a rejected sequence per row.
    rows = load.micro_batch_rows * (2 if load.kind in ("reward", "contrastive") else 1)
    tokens = rows * load.sequence_tokens
    activation_bytes = 2 if load.device_kind == "cuda" else 4
    per_layer_token = 34 * shape.hidden_size * activation_bytes // 2
    if gradient_checkpointing:
        layers = 2 * shape.hidden_size * activation_bytes // 2 * shape.num_layers + per_layer_token
    else:
        layers = per_layer_token * shape.num_layers
    logits = 0 if load.kind == "reward" else 2 * 4 * shape.vocab_size  # fp32 logits and their gradient
    decode_cache = 0
    if load.kind == "ppo" and load.device_kind == "cuda" and load.model_shards <= 1:
        # The static cache of the CUDA-graph decoder (decoders.StaticCacheDecoder) stays allocated on the policy
        # through the update, for the next iteration's rollout: keys and values of every layer, in bf16, at
        # the longest length a rollout can take (prompt + new tokens ≤ max_length, rounded up as the decoder
        # does). A sharded policy decodes with the growing cache, freed after the rollout.
        length = -(-load.sequence_tokens // DECODE_CACHE_MULTIPLE) * DECODE_CACHE_MULTIPLE
        key_value_size = shape.key_value_size or shape.hidden_size
        decode_cache = load.rollout_rows * length * shape.num_layers * 2 * key_value_size * 2
    shards = max(1, load.model_shards)
    return MemoryEstimate(
        weights=-(-weights // shards),
        gradients=-(-4 * trained // shards),
        optimizer=-(-8 * trained // shards),
        activations=tokens * (layers + logits),
        gradient_checkpointing=gradient_checkpointing,
        decode_cache=decode_cache,
    )


def plan(shape: ModelShape, load: StageLoad, *, device_memory: int) -> tuple[bool, MemoryEstimate]:
    """(fits, estimate): without gradient checkpointing when that fits, else with it (slower, far less memory)
    in the stages that support it."""
    budget = int(device_memory * FITS_FRACTION)
    estimate = None
    for checkpointing in (False, True) if load.kind in CHECKPOINTING_STAGES else (False,):
        estimate = training_memory(shape, load, gradient_checkpointing=checkpointing)
        if estimate.total <= budget:
            return True, estimate
    return False, estimate
