"""Stage configs refuse unrealistic values by field name; stages fail fast, with the reason, on what no config check
can see: a device the worker lacks, a loss that became NaN, LoRA targets the model does not have."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from training.engine import common as stages_common
from training.engine import lora_mixture, sft, stages
from training.engine.base_model import linear_module_names
from training.engine.common import (
    DeviceUnavailableError,
    ModelRef,
    PeftSettings,
    StageConfigError,
    StageInputs,
    TrainingDivergedError,
    json_safe,
    pick_device,
)
from training.engine.finetuning_methods import load_model_ref, prepare_model


def errors_of(kind: str, values: dict) -> dict[str, str]:
    with pytest.raises(StageConfigError) as excinfo:
        stages.config_from_dict(kind, values)
    return excinfo.value.errors


@pytest.mark.parametrize(
    ("kind", "values", "field"),
    [
        ("sft", {"device": "xyz"}, "device"),
        ("sft", {"device": "meta"}, "device"),  # holds no data: nothing trains there
        ("sft", {"device": "cuda:x"}, "device"),
        ("sft", {"learning_rate": 1e308}, "learning_rate"),
        ("sft", {"learning_rate": math.inf}, "learning_rate"),  # what json.loads makes of 1e999
        ("sft", {"learning_rate": math.nan}, "learning_rate"),
        ("sft", {"learning_rate": 10**400}, "learning_rate"),  # an int beyond any float
        ("sft", {"seed": 2**70}, "seed"),
        ("sft", {"seed": -1}, "seed"),
        ("sft", {"max_steps": 10**12}, "max_steps"),
        ("sft", {"max_steps": 1e12}, "max_steps"),
        ("sft", {"max_steps": "10"}, "max_steps"),
        ("sft", {"max_steps": True}, "max_steps"),
        ("sft", {"batch_size": 10**9}, "batch_size"),
        ("sft", {"batch_size": -4}, "batch_size"),
        ("sft", {"gradient_accumulation_steps": 10**6}, "gradient_accumulation_steps"),
        ("sft", {"max_length": 10**9}, "max_length"),
        ("sft", {"checkpoint_every": -1}, "checkpoint_every"),
        ("sft", {"log_every": 0}, "log_every"),
        ("sft", {"packing": 1}, "packing"),
        ("sft", {"peft": "lora"}, "peft"),
        ("sft", {"peft": {"lora_r": 0}}, "peft.lora_r"),
        ("sft", {"peft": {"lora_r": 10**6}}, "peft.lora_r"),
        ("sft", {"peft": {"lora_dropout": 1.0}}, "peft.lora_dropout"),
        ("sft", {"peft": {"lora_target_modules": []}}, "peft.lora_target_modules"),
        ("sft", {"peft": {"lora_target_modules": ["q proj;"]}}, "peft.lora_target_modules"),
        ("sft", {"peft": {"adapter_name": "a.b"}}, "peft.adapter_name"),
        ("reward", {"held_out_fraction": 1.5}, "held_out_fraction"),
        ("reward", {"eval_batch_size": 0}, "eval_batch_size"),
        ("ppo", {"temperature": 0}, "temperature"),  # log-probs at temperature 0 divide by zero
        ("ppo", {"temperature": "hot"}, "temperature"),
        ("ppo", {"top_p": 0}, "top_p"),
        ("ppo", {"gamma": 2.0}, "gamma"),
        ("ppo", {"kl_target": -1.0}, "kl_target"),
        ("ppo", {"mini_batch_size": 64, "batch_size": 16}, "mini_batch_size"),
        ("ppo", {"max_new_tokens": 600, "max_length": 512}, "max_new_tokens"),
        ("contrastive", {"beta": 0}, "beta"),
        ("contrastive", {"loss": "ipo"}, "loss"),
    ],
)
def test_unrealistic_values_are_refused_by_field(kind, values, field):
    errors = errors_of(kind, values)
    assert field in errors, errors


def test_every_bad_field_is_reported_at_once():
    errors = errors_of(
        "sft",
        {"max_steps": 10**12, "batch_size": True, "device": "meta", "seed": 2**70, "peft": {"lora_r": 0}},
    )
    assert errors == {
        "max_steps": "must be at most 1000000",
        "batch_size": "must be an integer",
        "device": "must be 'auto', 'cpu', 'cuda', 'cuda:N' (a GPU index) or 'mps'",
        "seed": "must be at most 4294967295",
        "peft.lora_r": "must be at least 1",
    }


def test_realistic_configs_pass():
    config = stages.config_from_dict(
        "ppo", {"device": "cuda:1", "learning_rate": 1.0, "seed": 2**32 - 1, "kl_target": None}
    )
    assert config.device == "cuda:1" and config.kl_target is None
    assert stages.config_from_dict("sft", {"device": "auto", "checkpoint_every": 0}).checkpoint_every == 0


def test_configs_built_in_python_are_checked_too():
    with pytest.raises(StageConfigError, match="learning_rate"):
        sft.SftStageConfig(learning_rate=1e308)
    with pytest.raises(StageConfigError, match="lora_r"):
        PeftSettings(lora_r=0)
    # Types and choices too, with the words JSON input gets.
    with pytest.raises(StageConfigError) as excinfo:
        sft.SftStageConfig(max_steps="10", packing=1, device=None, peft="lora")
    assert excinfo.value.errors == {
        "max_steps": "must be an integer",
        "packing": "must be true or false",
        "device": "must be a string",
        "peft": "must be an object",
    }
    with pytest.raises(StageConfigError, match="method: must be one of 'full', 'lora', 'adapter'"):
        PeftSettings(method="qlora")


def test_missing_device_is_a_clear_error():
    with pytest.raises(DeviceUnavailableError, match="'cuda:99' is not available"):
        pick_device("cuda:99")
    with pytest.raises(DeviceUnavailableError, match="not a training device"):
        pick_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="no usable CUDA GPU"):
            pick_device("cuda")
    assert pick_device("cpu").type == "cpu"


def test_json_safe_turns_non_finite_floats_into_null():
    assert json_safe({"loss": math.nan, "grad_norm": math.inf, "ok": 1.5, "rows": [-math.inf, 2]}) == {
        "loss": None,
        "grad_norm": None,
        "ok": 1.5,
        "rows": [None, 2],
    }


def rows(count: int = 8) -> Dataset:
    return Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": f"q{n}"},
                    {"role": "assistant", "content": "Sure, it is 4."},
                ]
            }
            for n in range(count)
        ]
    )


def test_sft_stops_at_the_first_nan_loss_with_the_reason(tiny_model_dir, tmp_path):
    config = sft.SftStageConfig(max_steps=20, batch_size=4, max_length=64, checkpoint_every=0, device="cpu")
    config.learning_rate = 1e30  # as a config stored before launch checked it would be: weights blow up
    reports = []
    with pytest.raises(
        TrainingDivergedError, match=r"became NaN at step [23]; lower the learning rate"
    ) as excinfo:
        sft.run(config, StageInputs(rows(), ModelRef(tiny_model_dir), tmp_path / "sft", reports.append))
    failed_at = int(str(excinfo.value).split("at step ")[1].split(";")[0])
    assert reports[-1].step == failed_at < 20  # stopped at once, not after 20 NaN steps
    assert not math.isfinite(reports[-1].values.get("grad_norm", 0.0)) or not math.isfinite(
        reports[-1].values.get("loss", 0.0)
    )
    assert not (tmp_path / "sft").exists()  # no artifact from a diverged run


def test_a_nan_loss_at_the_first_step_blames_the_base_model_not_the_learning_rate():
    check = stages_common.check_finite_training
    check({"loss": 1.0, "grad_norm": 2.0, "reward_mean": math.nan}, step=5, learning_rate=1e-4)  # not a loss
    with pytest.raises(TrainingDivergedError, match="loss became NaN at step 1; before any update"):
        check({"loss": math.nan}, step=1, learning_rate=1e-4)
    with pytest.raises(
        TrainingDivergedError, match="policy_loss became infinite at step 7; lower the learning rate"
    ):
        check({"policy_loss": math.inf}, step=7, learning_rate=1e-4)


def test_lora_targets_the_model_lacks_fail_before_training(tiny_model_dir):
    names = linear_module_names(tiny_model_dir)  # from the safetensors header alone
    assert "model.layers.0.self_attn.q_proj" in names and "lm_head" in names
    model, _ = load_model_ref(ModelRef(tiny_model_dir), "cpu")
    settings = PeftSettings(method="lora", lora_target_modules=("q_proj", "query_key_value"))
    with pytest.raises(ValueError, match="no module of the base model is named 'query_key_value'.*q_proj"):
        prepare_model(model, settings)
    with pytest.raises(ValueError, match="'query_key_value'"):
        lora_mixture.MixtureOfLoraExperts(model, ["a"], 4, 8, settings.lora_target_modules)
    # Dotted suffixes work as in PEFT, in the mixture too.
    mixture = lora_mixture.MixtureOfLoraExperts(model, ["a"], 4, 8, ("self_attn.q_proj",))
    assert sorted(mixture.expert_layers) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]


def test_stages_run_finds_the_stage_from_the_class_of_its_config():
    for kind in stages.STAGES:
        assert stages.kind_of(stages.config_class(kind)()) == kind
    with pytest.raises(StageConfigError, match="not the config of a stage"):
        stages.kind_of(stages_common.StageConfig())
