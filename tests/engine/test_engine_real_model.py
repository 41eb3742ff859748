"""One short run of each of our stage kinds on the bundled SmolLM2-135M (slow: ~minutes on 2 CPU cores)."""

from __future__ import annotations

import pytest
from datasets import Dataset

from training.engine import contrastive, ppo, reward_model, sft
from training.engine.common import ModelRef, PeftSettings, StageInputs

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "Name a colour."}]
PAIRS = Dataset.from_list(
    [
        {
            "prompt": PROMPT,
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "I refuse."}],
            "domain": d,
        }
        for d in ("a", "b")
    ]
    * 2
)


@pytest.fixture(scope="module")
def bundled_model_dir(tmp_path_factory):
    from training.engine.base_model import build_bundled_model, save_model_atomically

    model, tokenizer = build_bundled_model(progress=lambda message: None)
    return save_model_atomically(model, tokenizer, tmp_path_factory.mktemp("bundled") / "smollm2").path


@pytest.mark.parametrize("method", ["full", "lora", "adapter"])
def test_each_stage_runs_two_steps_on_the_real_model(bundled_model_dir, tmp_path, method):
    common = dict(
        max_steps=2,
        batch_size=2,
        max_length=64,
        checkpoint_every=0,
        device="cpu",
        peft=PeftSettings(method=method, lora_r=4, adapter_bottleneck=16),
    )
    base = ModelRef(bundled_model_dir)
    sft_rows = Dataset.from_list([{"messages": PROMPT + [{"role": "assistant", "content": "Blue."}]}] * 2)
    runs = [
        (sft, sft.SftStageConfig(**common), sft_rows),
        (reward_model, reward_model.RewardStageConfig(held_out_fraction=0.25, **common), PAIRS),
        (contrastive, contrastive.ContrastiveStageConfig(**common), PAIRS),
        (
            ppo,
            ppo.PPOConfig(
                mini_batch_size=2,
                ppo_epochs=1,
                max_new_tokens=8,
                reward_source="rules",
                rules=[{"kind": "keyword", "keywords": ["blue"]}],
                **common,
            ),
            Dataset.from_list([{"prompt": PROMPT}] * 2),
        ),
    ]
    for stage, config, data in runs:
        result = stage.run(config, StageInputs(data, base, tmp_path / stage.STAGE_NAME))
        assert result.status == "completed" and result.steps_completed == 2
        assert (result.artifact_path / "stage.json").is_file()
