"""Launch plans memory: a round that cannot fit the gpu worker is refused with numbers; one that fits only with
gradient checkpointing gets it."""

import pytest
from django.core.exceptions import ValidationError

from core.services import worker_heartbeat_record
from registry.models import ModelVersion
from tests.training.factories import ranked_project, register_tiny_base
from training.models import TrainingRun

pytestmark = pytest.mark.django_db
GIB = 2**30
LLAMA_8B_CONFIG = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "vocab_size": 128256,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}


def _big_base(tiny_model_dir) -> ModelVersion:
    """A registry row with an 8B model's shape (the weights are the tiny model's: no stage runs in these tests)."""
    base = register_tiny_base(tiny_model_dir)
    ModelVersion.objects.filter(pk=base.pk).update(config=LLAMA_8B_CONFIG, num_parameters=8_030_000_000)
    base.refresh_from_db()
    return base


def _gpu_worker(memory_gib: int | None) -> None:
    memory = memory_gib * GIB if memory_gib else None
    worker_heartbeat_record(
        hostname="gpu-1", queue="gpu", device="cuda:NVIDIA H100", device_memory_bytes=memory
    )


def _launch(launch, base, method: str):
    return launch(
        project=ranked_project(prompts=4),
        preset="sft",
        base_model=base,
        peft={"sft": method},
        stage_configs={"sft": {"max_steps": 1, "batch_size": 8, "max_length": 2048}},
    )


def _preference_options(base, *, contrastive_method: str, contrastive: dict) -> dict:
    """A preference round on `base`: a one-step LoRA SFT stage, then the contrastive stage as given."""
    return dict(
        project=ranked_project(prompts=4),
        preset="preference",
        base_model=base,
        peft={"sft": "lora", "contrastive": contrastive_method},
        stage_configs={
            "sft": {"max_steps": 1, "batch_size": 1, "max_length": 512},
            "contrastive": contrastive,
        },
    )


def test_full_fine_tuning_that_cannot_fit_is_refused_with_the_numbers(
    tiny_model_dir, launch, enqueued_stages
):
    _gpu_worker(80)
    with pytest.raises(ValidationError) as excinfo:
        _launch(launch, _big_base(tiny_model_dir), "full")
    (message,) = excinfo.value.message_dict["sft.batch_size"]
    assert (
        "about 141.4 GiB" in message
        and "optimizer 59.8," in message
        and "has 80 GiB" in message
        and "or LoRA" in message
    )
    assert TrainingRun.objects.count() == 0 and not enqueued_stages


@pytest.mark.parametrize(("memory_gib", "checkpointing"), [(80, True), (141, False)])
def test_lora_gets_gradient_checkpointing_only_where_it_needs_it(
    tiny_model_dir, launch, memory_gib, checkpointing
):
    _gpu_worker(memory_gib)
    run = _launch(launch, _big_base(tiny_model_dir), "lora")
    assert run.stages.get().config["gradient_checkpointing"] is checkpointing


@pytest.mark.parametrize(("memory_gib", "checkpointing"), [(80, True), (141, False)])
def test_the_contrastive_stage_gets_gradient_checkpointing_only_where_it_needs_it(
    tiny_model_dir, launch, memory_gib, checkpointing
):
    """DPO with LoRA on an 8B base, 4 pairs of 2,048 tokens: ~101 GiB as planned, ~39 GiB with its layers
    recomputed in the backward pass (its own loop checkpoints as the Trainer's stages do)."""
    _gpu_worker(memory_gib)
    run = launch(
        **_preference_options(
            _big_base(tiny_model_dir),
            contrastive_method="lora",
            contrastive={"max_steps": 1, "batch_size": 4, "max_length": 2048},
        )
    )
    assert run.stages.get(kind="contrastive").config["gradient_checkpointing"] is checkpointing


def test_nothing_is_planned_when_no_worker_reported_its_memory(tiny_model_dir, launch):
    _gpu_worker(None)
    run = _launch(launch, _big_base(tiny_model_dir), "full")
    assert run.stages.get().config["gradient_checkpointing"] is False


@pytest.mark.parametrize(("sharding", "fits"), [("auto", True), ("fsdp", True), ("ddp", False)])
def test_a_full_fine_tune_too_big_for_one_gpu_fits_sharded_over_four(tiny_model_dir, launch, sharding, fits):
    """An 8B full fine-tune needs ~120 GiB of weights, gradients and AdamW state: not one 80 GiB GPU's worth, but a
    quarter of it each on four (FSDP, which `auto` picks for it), besides each GPU's activations."""
    worker_heartbeat_record(
        hostname="gpu-4", queue="gpu", device="cuda:NVIDIA H100", device_count=4, device_memory_bytes=80 * GIB
    )
    configs = {
        "sft": {"max_steps": 1, "batch_size": 8, "max_length": 2048, "processes": 4, "sharding": sharding}
    }
    options = dict(
        project=ranked_project(prompts=4),
        preset="sft",
        base_model=_big_base(tiny_model_dir),
        peft={"sft": "full"},
        stage_configs=configs,
    )
    if fits:
        assert launch(**options).stages.get().config["sharding"] == sharding
    else:
        with pytest.raises(ValidationError) as excinfo:
            launch(**options)
        assert "optimizer 59.8," in excinfo.value.message_dict["sft.batch_size"][0]


def test_the_launch_refuses_fsdp_where_nothing_shards_it(tiny_model_dir, launch):
    with pytest.raises(ValidationError) as excinfo:
        launch(
            project=ranked_project(prompts=4),
            preset="rlhf",
            base_model=register_tiny_base(tiny_model_dir),
            stage_configs={
                "sft": {"sharding": "fsdp"},  # one process: nothing to shard over
                "ppo": {"sharding": "fsdp"},
            },
        )
    errors = excinfo.value.message_dict
    assert "set processes to 2 or more" in errors["sft.sharding"][0]
    assert "set processes to 2 or more" in errors["ppo.sharding"][0]


def _rlhf_options(base, ppo: dict) -> dict:
    small = {"max_steps": 1, "batch_size": 1, "max_length": 512}
    return dict(
        project=ranked_project(prompts=4),
        preset="rlhf",
        base_model=base,
        peft={"sft": "lora", "reward": "lora", "ppo": "lora"},
        stage_configs={"sft": small, "reward": small, "ppo": ppo},
    )


@pytest.mark.parametrize(("memory_gib", "accumulation"), [(80, 11), (141, 4), (420, 1)])
def test_a_ppo_stage_that_fits_only_in_smaller_micro_batches_gets_more_gradient_accumulation(
    tiny_model_dir, launch, memory_gib, accumulation
):
    """LoRA PPO on an 8B base with its reward model, 64-row optimizer steps of 1,024 tokens (and the rollout's 8
    GiB KV cache): ~375 GiB in one forward; 4 micro-batches of 16 rows need ~124 GiB (an H200), 11 of at most 6
    rows ~72 GiB (an H100): the fewest that fit. The same optimizer steps: ppo_update weighs each micro-batch by
    its tokens."""
    _gpu_worker(memory_gib)
    ppo_config = {"max_steps": 1, "batch_size": 64, "mini_batch_size": 64, "max_length": 1024}
    run = launch(**_rlhf_options(_big_base(tiny_model_dir), ppo_config))
    ppo = run.stages.get(kind="ppo").config
    assert ppo["gradient_accumulation_steps"] == accumulation and ppo["mini_batch_size"] == 64


def test_a_ppo_stage_that_cannot_fit_even_one_row_a_forward_is_refused_with_the_numbers(
    tiny_model_dir, launch
):
    _gpu_worker(24)
    ppo_config = {"max_steps": 1, "batch_size": 8, "mini_batch_size": 8, "max_length": 1024}
    with pytest.raises(ValidationError) as excinfo:
        launch(**_rlhf_options(_big_base(tiny_model_dir), ppo_config))
    (message,) = excinfo.value.message_dict["ppo.batch_size"]
    # The estimate of the smallest micro-batch (one row), and no advice to shrink a batch that would not help.
    assert (
        "activations 5.2, rollout KV cache 1.0 GiB" in message
        and "has 24 GiB" in message
        and "a smaller max_length" in message
    )


@pytest.mark.parametrize(("sharding", "fits"), [("auto", True), ("fsdp", True), ("ddp", False)])
def test_a_ppo_full_fine_tune_too_big_for_one_gpu_fits_sharded_over_four(
    tiny_model_dir, launch, sharding, fits
):
    """PPO shards in its own loop: an 8B full fine-tune with its frozen reference and reward model (~150 GiB of
    weights, gradients and AdamW state) fits a quarter on each of four 80 GiB GPUs, not a full copy on each."""
    worker_heartbeat_record(
        hostname="gpu-4", queue="gpu", device="cuda:NVIDIA H100", device_count=4, device_memory_bytes=80 * GIB
    )
    small = {"max_steps": 1, "batch_size": 1, "max_length": 512}
    options = dict(
        project=ranked_project(prompts=4),
        preset="rlhf",
        base_model=_big_base(tiny_model_dir),
        peft={"sft": "lora", "reward": "lora", "ppo": "full"},
        stage_configs={
            "sft": small,
            "reward": small,
            "ppo": {
                **small,
                "batch_size": 8,
                "mini_batch_size": 4,
                "max_new_tokens": 64,
                "processes": 4,
                "sharding": sharding,
            },
        },
    )
    if fits:
        [ppo] = [stage for stage in launch(**options).stages.all() if stage.kind == "ppo"]
        assert ppo.config["sharding"] == sharding
    else:
        with pytest.raises(ValidationError) as excinfo:
            launch(**options)
        (message,) = excinfo.value.message_dict["ppo.batch_size"]
        assert "optimizer 59.8," in message and "has 80 GiB" in message


@pytest.mark.parametrize(("sharding", "fits"), [("auto", True), ("fsdp", True), ("ddp", False)])
def test_a_contrastive_full_fine_tune_too_big_for_one_gpu_fits_sharded_over_four(
    tiny_model_dir, launch, sharding, fits
):
    """The contrastive stage shards in its own loop too: an 8B full fine-tune fits a quarter of its model state on
    each of four 80 GiB GPUs (what `auto` picks for it), not a full copy on each."""
    worker_heartbeat_record(
        hostname="gpu-4", queue="gpu", device="cuda:NVIDIA H100", device_count=4, device_memory_bytes=80 * GIB
    )
    options = _preference_options(
        _big_base(tiny_model_dir),
        contrastive_method="full",
        contrastive={
            "max_steps": 1,
            "batch_size": 8,
            "max_length": 512,
            "processes": 4,
            "sharding": sharding,
        },
    )
    if fits:
        [contrastive] = [stage for stage in launch(**options).stages.all() if stage.kind == "contrastive"]
        assert contrastive.config["sharding"] == sharding
    else:
        with pytest.raises(ValidationError) as excinfo:
            launch(**options)
        assert "optimizer 59.8," in excinfo.value.message_dict["contrastive.batch_size"][0]
