"""Memory planning: the estimate orders configurations as the hardware does, and checkpointing is picked to fit."""

import pytest
import torch
from datasets import Dataset

from training.engine import contrastive, memory, sft
from training.engine.common import ModelRef, PeftSettings, StageInputs

SMOLLM2_1_7B = memory.ModelShape(
    num_parameters=1_711_000_000, hidden_size=2048, num_layers=24, vocab_size=49152
)
GIB = memory.GIB
LOAD = dict(kind="sft", method="full", micro_batch_rows=8, sequence_tokens=2048, device_kind="cuda")


def _estimate(gradient_checkpointing: bool = False, **overrides) -> memory.MemoryEstimate:
    load = memory.StageLoad(**{**LOAD, **overrides})
    return memory.training_memory(SMOLLM2_1_7B, load, gradient_checkpointing=gradient_checkpointing)


def test_full_fine_tuning_pays_for_gradients_and_adamw_and_lora_does_not():
    full, lora = _estimate(), _estimate(method="lora")
    # fp32 weights + fp32 gradients + two fp32 AdamW moments: 16 bytes a parameter.
    assert full.weights + full.gradients + full.optimizer == 16 * SMOLLM2_1_7B.num_parameters
    assert lora.gradients + lora.optimizer < 0.05 * (full.gradients + full.optimizer)
    assert full.activations == lora.activations
    # LoRA's frozen base is bf16 on CUDA (2 bytes), its trained pairs fp32; on a CPU everything is fp32.
    assert lora.weights == 2 * SMOLLM2_1_7B.num_parameters + 4 * int(SMOLLM2_1_7B.num_parameters * 0.02)
    assert _estimate(method="lora", device_kind="cpu").weights == 4 * SMOLLM2_1_7B.num_parameters


def test_fsdp_divides_the_model_state_over_the_shards_and_not_the_activations():
    whole, quarter = _estimate(), _estimate(model_shards=4)
    assert (quarter.weights, quarter.gradients, quarter.optimizer) == (
        whole.weights // 4,
        whole.gradients // 4,
        whole.optimizer // 4,
    )
    assert quarter.activations == whole.activations  # each process still runs its own rows


def test_a_full_fine_tune_counts_its_frozen_reference_copy_and_an_adapter_none():
    """The contrastive stage's full fine-tune keeps an fp32 copy of the policy as its DPO reference; PPO's full
    fine-tune a reference loaded in bf16 on CUDA (fp32 on a CPU) and its reward model likewise. With LoRA the
    reference is the policy with its adapter switched off: no copy."""
    params, critic = SMOLLM2_1_7B.num_parameters, SMOLLM2_1_7B.hidden_size + 1
    sft_full, sft_lora = _estimate(), _estimate(method="lora")
    contrastive_full = _estimate(kind="contrastive")
    assert contrastive_full.weights == sft_full.weights + 4 * params
    assert (contrastive_full.gradients, contrastive_full.optimizer) == (
        sft_full.gradients,
        sft_full.optimizer,
    )
    assert _estimate(kind="contrastive", method="lora").weights == sft_lora.weights
    # Sharded, the reference copy is split with the policy (contrastive.Policy.shard).
    assert _estimate(kind="contrastive", model_shards=4).weights == -(-(8 * params) // 4)

    ppo_full = _estimate(kind="ppo")
    assert (
        ppo_full.weights == 4 * params + 2 * params + 2 * params + 4 * critic
    )  # policy, reference, reward model
    # Trained: the policy and its critic (a linear head), nothing else.
    assert (ppo_full.gradients, ppo_full.optimizer) == (4 * (params + critic), 8 * (params + critic))
    assert _estimate(kind="ppo", reward_model=False).weights == ppo_full.weights - 2 * params
    assert _estimate(kind="ppo", device_kind="cpu").weights == 4 * (3 * params + critic)
    ppo_lora = _estimate(kind="ppo", method="lora")
    assert (
        ppo_lora.weights == sft_lora.weights + 2 * params + 4 * critic
    )  # the reward model; no reference copy
    sharded = _estimate(kind="ppo", model_shards=2)
    assert (sharded.weights, sharded.optimizer) == (-(-ppo_full.weights // 2), -(-ppo_full.optimizer // 2))


def test_a_micro_batch_is_each_process_share_and_in_ppo_a_piece_of_its_minibatch():
    assert memory.micro_batch_rows("sft", batch_size=8, processes=2) == 4
    assert memory.micro_batch_rows("contrastive", batch_size=8) == 8
    # PPO trains on mini_batch_size rollout rows per optimizer step (batch_size is the rollout's prompts), each
    # process its share, in gradient_accumulation_steps pieces, the first ones larger when they do not divide.
    ppo_rows = dict(batch_size=64, mini_batch_size=16)
    assert memory.micro_batch_rows("ppo", **ppo_rows, processes=2) == 8
    assert memory.micro_batch_rows("ppo", **ppo_rows, processes=2, gradient_accumulation_steps=3) == 3
    assert memory.micro_batch_rows("ppo", **ppo_rows, processes=4, gradient_accumulation_steps=4) == 1


def test_sharding_plans_ppo_on_its_update_micro_batch_and_its_reward_source(monkeypatch):
    from training.engine import sharding
    from training.engine.ppo import PPOConfig

    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun tells each rank
    rules = [{"kind": "length", "target": 0, "tolerance": 40}]
    config = PPOConfig(processes=2, batch_size=8, mini_batch_size=4, gradient_accumulation_steps=2)
    load = sharding.stage_load(config, "cpu", kind="ppo")
    assert (load.micro_batch_rows, load.reward_model) == (1, True)
    ruled = PPOConfig(processes=2, batch_size=8, mini_batch_size=8, reward_source="rules", rules=rules)
    assert (sharding.stage_load(ruled, "cpu", kind="ppo").micro_batch_rows, ruled.reward_source) == (
        4,
        "rules",
    )
    assert sharding.stage_load(ruled, "cpu", kind="ppo").reward_model is False


def test_activations_grow_with_tokens_and_checkpointing_cuts_them():
    small, large = _estimate(micro_batch_rows=4), _estimate(micro_batch_rows=8)
    assert large.activations == 2 * small.activations
    checkpointed = _estimate(gradient_checkpointing=True)
    assert checkpointed.activations < 0.6 * large.activations


def test_plan_turns_on_checkpointing_only_when_needed_and_only_where_supported():
    sft_load, ppo_load = memory.StageLoad(**LOAD), memory.StageLoad(**{**LOAD, "kind": "ppo"})
    fits, plain = memory.plan(SMOLLM2_1_7B, sft_load, device_memory=141 * GIB)
    assert fits and not plain.gradient_checkpointing
    fits, tight = memory.plan(SMOLLM2_1_7B, sft_load, device_memory=48 * GIB)
    assert fits and tight.gradient_checkpointing and tight.total <= 0.9 * 48 * GIB < plain.total
    fits, ppo = memory.plan(SMOLLM2_1_7B, ppo_load, device_memory=48 * GIB)
    assert not fits and not ppo.gradient_checkpointing
    assert "GiB" in ppo.describe() and "optimizer" in ppo.describe()


def test_gradient_checkpointing_recomputes_layers_and_trains_the_same_model(
    tiny_model_dir, tmp_path, monkeypatch
):
    from transformers.models.llama.modeling_llama import LlamaMLP

    # Counted one module inside each decoder layer: the layer's own forward is the one transformers checkpoints.
    layer_forwards = []
    real_forward = LlamaMLP.forward

    def counting_forward(self, *args, **kwargs):
        layer_forwards.append(1)
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaMLP, "forward", counting_forward)
    rows = Dataset.from_list(
        [{"messages": [{"role": "user", "content": f"Say {n}"}, {"role": "assistant", "content": f"{n} it is."}]}
         for n in range(8)]
    )  # fmt: skip
    losses, layer_calls = {}, {}
    for checkpointing in (False, True):
        layer_forwards.clear()
        config = sft.SftStageConfig(max_steps=3, learning_rate=1e-3, batch_size=4, max_length=64,
                                    checkpoint_every=0, device="cpu", gradient_checkpointing=checkpointing)  # fmt: skip
        seen = []
        inputs = StageInputs(
            data=rows,
            base=ModelRef(tiny_model_dir),
            out_dir=tmp_path / f"sft-{checkpointing}",
            on_progress=lambda metrics, seen=seen: (
                seen.append(metrics.values["loss"]) if "loss" in metrics.values else None
            ),
        )
        sft.run(config, inputs)
        losses[checkpointing], layer_calls[checkpointing] = seen, len(layer_forwards)
    # 3 steps × 2 decoder layers, each run once more in the backward pass when checkpointed.
    assert layer_calls == {False: 3 * 2, True: 3 * 2 * 2}
    assert len(losses[True]) == 3
    assert torch.allclose(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_contrastive_stage_checkpointed_recomputes_the_policys_layers_and_trains_the_same(
    method, tiny_model_dir, tmp_path, monkeypatch
):
    from transformers.models.llama.modeling_llama import LlamaMLP

    from tests.engine.test_cancel import preference_pairs

    layer_forwards = []
    real_forward = LlamaMLP.forward

    def counting_forward(self, *args, **kwargs):
        layer_forwards.append(torch.is_grad_enabled())
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaMLP, "forward", counting_forward)
    losses, with_grad, without_grad = {}, {}, {}
    for checkpointing in (False, True):
        layer_forwards.clear()
        config = contrastive.ContrastiveStageConfig(
            max_steps=3, learning_rate=1e-3, batch_size=4, max_length=64, checkpoint_every=0, device="cpu",
            gradient_checkpointing=checkpointing, peft=PeftSettings(method=method, lora_r=4),
        )  # fmt: skip
        seen = []
        inputs = StageInputs(
            data=preference_pairs(),
            base=ModelRef(tiny_model_dir),
            out_dir=tmp_path / f"contrastive-{checkpointing}",
            on_progress=lambda metrics, seen=seen: (
                seen.append(metrics.values["loss"]) if "loss" in metrics.values else None
            ),
        )
        contrastive.run(config, inputs)
        losses[checkpointing] = seen
        with_grad[checkpointing] = sum(layer_forwards)
        without_grad[checkpointing] = len(layer_forwards) - sum(layer_forwards)
    # The policy's 2 decoder layers run once more per step (3 steps) in the backward pass when checkpointed; the
    # reference's forwards, without gradients, are not recomputed.
    assert with_grad[True] == with_grad[False] + 3 * 2
    assert without_grad[True] == without_grad[False]
    assert len(losses[True]) == 3 and losses[False][-1] < losses[False][0]
    assert torch.allclose(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4)
