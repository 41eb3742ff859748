"""Contrastive stage: DPO and CPO widen the chosen-over-rejected margin; the expert router learns to split domains."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from training.engine import contrastive, lora_mixture
from training.engine.common import ModelRef, PeftSettings, StageInputs
from training.engine.finetuning_methods import base_parameters, load_model_ref

TOPICS = {
    "math": ["add two and three", "multiply four by five", "divide ten by two", "subtract one from nine"],
    "poetry": ["write about the sea", "a verse on autumn", "rhyme about the moon", "a line on roses"],
}


def preference_rows(domains=("math", "poetry")) -> Dataset:
    """Chosen answers end with "great", rejected with "awful"; the two domains use disjoint prompt words."""
    rows = []
    for domain in domains:
        for topic in TOPICS[domain]:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": topic}],
                    "chosen": [{"role": "assistant", "content": "That is great"}],
                    "rejected": [{"role": "assistant", "content": "That is awful"}],
                    "domain": domain,
                }
            )
    return Dataset.from_list(rows)


def margin_of(model, tokenizer, data: Dataset) -> float:
    policy = contrastive.Policy(model, getattr(model, "expert_mixture", None), None)
    examples = contrastive.tokenize_pairs(tokenizer, data, 64, sorted(set(data["domain"])))
    return contrastive.evaluate_margin(policy, examples, tokenizer.pad_token_id, "cpu", 8)["log_prob_margin"]


def config(**overrides) -> contrastive.ContrastiveStageConfig:
    values = dict(
        max_steps=8,
        learning_rate=5e-3,
        batch_size=8,
        max_length=64,
        checkpoint_every=0,
        device="cpu",
        beta=0.5,
    )
    values.update(overrides)
    return contrastive.ContrastiveStageConfig(**values)


@pytest.mark.parametrize("loss", ["dpo", "cpo"])
def test_full_training_widens_chosen_over_rejected_margin(tiny_model_dir, tmp_path, loss):
    data = preference_rows(("math",))
    base_model, tokenizer = load_model_ref(ModelRef(tiny_model_dir), "cpu")
    before = margin_of(base_model.eval(), tokenizer, data)
    result = contrastive.run(config(loss=loss), StageInputs(data, ModelRef(tiny_model_dir), tmp_path / loss))
    trained, _ = contrastive.load_policy(result.artifact_path)
    after = margin_of(trained, tokenizer, data)
    assert after > before + 1.0, (before, after)
    assert result.metrics["final_log_prob_margin"] == pytest.approx(after, abs=1e-3)


def test_expert_mixture_router_routes_domains_apart_and_base_is_untouched(tiny_model_dir, tmp_path):
    data = preference_rows()
    base_model, tokenizer = load_model_ref(ModelRef(tiny_model_dir), "cpu")
    before = margin_of(base_model.eval(), tokenizer, data)
    base_state = {name: tensor.clone() for name, tensor in base_model.state_dict().items()}
    settings = PeftSettings(method="lora", lora_r=4, lora_alpha=8)
    progress = []
    result = contrastive.run(
        config(max_steps=12, peft=settings, router_loss_weight=1.0),
        StageInputs(data, ModelRef(tiny_model_dir), tmp_path / "mix", progress.append),
    )
    assert progress[-1].values["router_loss"] < progress[0].values["router_loss"]

    policy, _ = contrastive.load_policy(result.artifact_path)
    assert policy.expert_mixture.domains == ["math", "poetry"]
    routes = lora_mixture.route_of(policy, tokenizer, [row["prompt"] for row in data])
    math_route, poetry_route = routes[:4].mean(0), routes[4:].mean(0)
    assert math_route.argmax() == 0 and poetry_route.argmax() == 1  # each domain mostly on its own expert
    assert margin_of(policy, tokenizer, data) > before

    # The experts sit beside frozen base weights, which stay bit-identical to the saved base.
    for name, tensor in base_parameters(policy).items():
        key = name.replace(".base.", ".")
        if key in base_state:
            assert torch.equal(tensor, base_state[key]), name


def test_one_domain_means_one_expert_and_generation_routes_itself(tiny_model_dir, tmp_path):
    data = preference_rows(("poetry",)).remove_columns("domain")
    result = contrastive.run(
        config(max_steps=2, peft=PeftSettings(method="lora", lora_r=4)),
        StageInputs(data, ModelRef(tiny_model_dir), tmp_path / "single"),
    )
    policy, tokenizer = contrastive.load_policy(result.artifact_path)
    assert policy.expert_mixture.domains == ["default"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a verse on autumn"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = policy.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 3
    assert torch.allclose(policy.expert_mixture.routing.weights, torch.ones(1, 1))


def test_cancel_then_resume_continues_at_saved_step(tiny_model_dir, tmp_path):
    data = preference_rows(("math",))
    out_dir = tmp_path / "dpo"
    calls = []
    cancelled = contrastive.run(
        config(max_steps=5, checkpoint_every=2),
        StageInputs(
            data, ModelRef(tiny_model_dir), out_dir, should_stop=lambda: calls.append(1) or len(calls) >= 3
        ),
    )
    assert cancelled.status == "cancelled" and cancelled.steps_completed == 3 and not out_dir.exists()
    progress = []
    resumed = contrastive.run(
        config(max_steps=5, checkpoint_every=2),
        StageInputs(data, ModelRef(tiny_model_dir), out_dir, progress.append),
    )
    assert [m.step for m in progress] == [4, 5]
    assert resumed.status == "completed" and (out_dir / "stage.json").is_file()


def test_right_padded_rows_score_the_same_without_the_padding_mask(tiny_model_dir):
    """The stage scores right-padded rows under the causal mask alone (SDPA's flash path): every real token's
    log-prob equals the one computed with the padding mask, whatever the padding (also padded to a multiple)."""
    model, tokenizer = load_model_ref(ModelRef(tiny_model_dir), "cpu")
    rows = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "ok"}],
                "rejected": [{"role": "assistant", "content": "a much longer answer, with many more tokens"}],
            },
        ]  # fmt: skip
    )
    examples = contrastive.tokenize_pairs(tokenizer, rows, 64, [contrastive.NO_DOMAIN])
    for multiple in (1, 16):
        batch = contrastive.collate(examples, tokenizer.pad_token_id, "cpu", pad_to_multiple_of=multiple)
        assert batch["input_ids"].shape[1] % multiple == 0
        assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # the short row is padded
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        token_log_probs = logits.float().log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        masked = (token_log_probs * batch["completion_mask"][:, 1:]).sum(-1)
        unmasked, _ = contrastive.sequence_log_probs(model, batch)
        torch.testing.assert_close(unmasked, masked, rtol=1e-5, atol=1e-5)


def test_collate_builds_the_rows_and_masks_each_example_spells_out():
    examples = [
        {"chosen": [5, 6, 7, 8], "rejected": [5, 6, 9], "prompt_length": 2, "domain": 0},
        {
            "chosen": [1, 2],
            "rejected": [1, 2, 3, 4, 5, 6],
            "prompt_length": 3,
            "domain": 1,
        },  # prompt past a row
    ]
    batch = contrastive.collate(examples, pad_token_id=0, device="cpu", pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 8, 0, 0, 0, 0],
        [1, 2, 0, 0, 0, 0, 0, 0],
        [5, 6, 9, 0, 0, 0, 0, 0],
        [1, 2, 3, 4, 5, 6, 0, 0],
    ]
    assert batch["attention_mask"].tolist() == [
        [int(t != 0) for t in row] for row in batch["input_ids"].tolist()
    ]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0],
    ]
    assert batch["prompt_mask"].tolist() == [[1, 1] + [0] * 6, [1, 1, 1] + [0] * 5] * 2
    assert batch["domain"].tolist() == [0, 1, 0, 1]
    # flat indices into the [rows, 7] grid of predicted tokens (x_t, t >= 1) that are scored
    assert batch["scored_positions"].tolist() == [1, 2, 15, 23, 24, 25]
    assert all(tensor.dtype == torch.long for tensor in batch.values())


def test_a_nan_loss_stops_the_stage_at_the_next_report_with_its_step_and_writes_nothing(
    tiny_model_dir, tmp_path
):
    """Metrics are read only at reports (no host sync per step), so a NaN is found there, before any checkpoint."""
    from training.engine.common import TrainingDivergedError, checkpoint_dir_for

    out_dir = tmp_path / "dpo"
    reports = []
    stage_config = config(max_steps=12, log_every=4, checkpoint_every=4, peft=PeftSettings(method="full"))
    stage_config.learning_rate = 1e30  # as a config stored before launch checked it would be: weights blow up
    with pytest.raises(
        TrainingDivergedError, match=r"became NaN at step \d+; lower the learning rate"
    ) as info:
        contrastive.run(
            stage_config,
            StageInputs(preference_rows(("math",)), ModelRef(tiny_model_dir), out_dir, reports.append),
        )
    failed_at = int(str(info.value).split("at step ")[1].split(";")[0])
    assert 2 <= failed_at <= 4  # step 1 is the base model's own loss; the blow-up shows at the first update
    assert (
        reports == []
    )  # found at the first report (step 4), before it is sent and before the step-4 checkpoint
    assert not out_dir.exists() and not list(checkpoint_dir_for(out_dir).glob("*"))


def run_recording_reports(stage_config, tiny_model_dir, tmp_path):
    """(the stage's result, its reports, and the order of its stop checks — one before each step after the first —
    and reports, each a step number)."""
    events, reports = [], []

    def should_stop() -> bool:
        events.append("next step")
        return False

    def on_progress(metrics) -> None:
        events.append(metrics.step)
        reports.append(metrics)

    result = contrastive.run(
        stage_config,
        StageInputs(
            preference_rows(("math",)), ModelRef(tiny_model_dir), tmp_path / "dpo", on_progress, should_stop
        ),
    )
    return result, reports, events


def test_reported_metrics_are_means_over_the_steps_since_the_last_report(tiny_model_dir, tmp_path):
    _, reports, events = run_recording_reports(config(max_steps=6, log_every=3), tiny_model_dir, tmp_path)
    assert [r.step for r in reports] == [3, 6]
    assert events == ["next step"] * 3 + [3] + ["next step"] * 2 + [6]  # one step late, not one report late
    assert set(reports[0].values) == {"loss", "router_loss", "log_prob_margin", "preference_accuracy"}
    assert (
        reports[-1].values["loss"] < reports[0].values["loss"]
    )  # it learns: the later window's mean is lower
    assert 0.0 <= reports[-1].values["preference_accuracy"] <= 1.0


def test_each_report_is_sent_once_the_next_step_is_queued_and_the_last_before_the_stage_ends(
    tiny_model_dir, tmp_path
):
    """With a report every step the CPU still never waits for the GPU to drain: report N is read after step N+1's
    work has been queued (here: after the stop check that starts step N+1), and the last one before the result."""
    result, reports, events = run_recording_reports(
        config(max_steps=4, log_every=1), tiny_model_dir, tmp_path
    )
    assert events == ["next step", 1, "next step", 2, "next step", 3, 4]
    assert result.status == "completed" and result.steps_completed == 4
    assert {key: result.metrics[key] for key in contrastive.MetricWindow.NAMES} == reports[-1].values
