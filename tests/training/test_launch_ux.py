"""Launching a round that fits the machine: errors by field in words, derived values, sizes, the estimate before
the start and the ETA while it runs (issue #16, items 2 and 4)."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from core.services import worker_heartbeat_record
from registry.models import ModelVersion
from tests.training.factories import make_user, ranked_project, register_tiny_base
from training import estimates
from training.engine.common import PhaseProgress, StepMetrics
from training.engine.stages import config_defaults
from training.models import StageRun, TrainingRun
from training.services import runs as run_services
from training.services.datasets import DataSize
from training.services.execution import StageReporter

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(tiny_model_dir):
    project = ranked_project(prompts=6)
    base = register_tiny_base(tiny_model_dir)
    admin = make_user("admin-user", "admin")
    return project, base, admin


def _form(project, **overrides):
    data = {
        "project": project.slug, "preset": "rlhf", "size": "default", "peft_sft": "lora", "peft_reward": "lora",
        "peft_ppo": "lora", "peft_contrastive": "lora", "max_steps": "2", "exclude_flagged": "on",
    }  # fmt: skip
    data.update(overrides)
    return data


def test_every_stage_batch_size_derives_the_ppo_mini_batch(client, world, enqueued_stages):
    project, _, admin = world
    client.force_login(admin)
    response = client.post("/training/launch/", _form(project, batch_size="4"))
    assert response.status_code == 302
    run = TrainingRun.objects.get()
    assert run.config["ppo"]["batch_size"] == 4 and run.config["ppo"]["mini_batch_size"] == 4
    assert run.config["sft"]["batch_size"] == 4


def test_derived_values_follow_the_given_ones_and_never_override_them():
    plan = run_services.launch_plan_validate(
        preset="rft",
        stage_configs={
            "ppo": {"batch_size": 2, "max_length": 40, "rules": [{"kind": "keyword", "keywords": ["yes"]}]}
        },
    )
    ppo = dict((kind, config) for kind, _, config in plan.stages)["ppo"]
    assert ppo["mini_batch_size"] == 2 and ppo["max_new_tokens"] == 20  # half of max_length
    with pytest.raises(Exception) as excinfo:
        run_services.launch_plan_validate(
            preset="rlhf", stage_configs={"ppo": {"batch_size": 2, "mini_batch_size": 4}}
        )
    assert "mini_batch_size (4) cannot be larger than batch_size (2)" in str(excinfo.value)


def test_a_rule_between_two_values_is_shown_beside_the_form_field_in_words_with_a_summary(client, world):
    project, _, admin = world
    client.force_login(admin)
    response = client.post(
        "/training/launch/", _form(project, batch_size="4", advanced='{"ppo": {"mini_batch_size": 8}}')
    )
    assert response.status_code == 422
    form = response.context["form"]
    expected = (
        "PPO mini-batch size (8) cannot be larger than the batch size (4), the number of prompts per rollout"
    )
    assert form.errors["batch_size"] == [expected]
    assert "advanced" not in form.errors
    html = response.content.decode()
    summary = html[html.index('id="error-summary"') : html.index('id="field-project"')]
    assert "1 problem stops this launch" in summary
    assert f'<a href="#field-batch_size">Batch size</a>: {expected}' in summary
    assert "__all__" not in html and "mini_batch_size cannot" not in html

    response = client.post(
        "/training/launch/", _form(project, advanced='{"ppo": {"max_new_tokens": 600, "clip_range": 0}}')
    )
    errors = response.context["form"].errors["advanced"]
    assert "PPO clip range must be greater than 0 (ppo.clip_range)" in errors
    assert (
        "PPO new tokens per answer (600) must be smaller than the maximum length in tokens (512), which holds "
        "the prompt and the completion (ppo.max_new_tokens)"
    ) in errors
    assert "2 problems stop this launch" in response.content.decode()


def test_cpu_installations_start_from_the_cpu_demo_size_with_lora(client, world):
    _, _, admin = world
    client.force_login(admin)
    form = client.get("/training/launch/").context["form"]
    assert form["size"].value() == "cpu_demo" and form["peft_sft"].value() == "lora"
    worker_heartbeat_record(hostname="gpu-1", queue="gpu", device="cuda:NVIDIA H200")
    form = client.get("/training/launch/").context["form"]
    assert form["size"].value() == "default" and form["peft_sft"].value() == "full"


def _estimate(client, project, **overrides) -> tuple[float, dict[str, float], str]:
    response = client.get("/training/launch/estimate/", _form(project, **overrides), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    total = float(re.search(r'data-testid="launch-estimate" data-seconds="(\d+)"', html).group(1))
    stages = {kind: float(s) for kind, s in re.findall(r'data-stage="(\w+)" data-seconds="(\d+)"', html)}
    return total, stages, html


def test_launch_estimate_from_model_size_data_and_settings(client, world):
    project, base, admin = world
    ModelVersion.objects.filter(pk=base.pk).update(num_parameters=135_000_000)  # as SmolLM2-135M
    client.force_login(admin)
    demo, demo_stages, html = _estimate(client, project, size="cpu_demo", max_steps="")
    assert set(demo_stages) == {"sft", "reward", "ppo"} and demo == pytest.approx(
        sum(demo_stages.values()), abs=3
    )
    assert "assumed 50 GFLOP/s for sft on a CPU" in html and "on the workers' CPU" in html
    default, default_stages, _ = _estimate(client, project, size="default", max_steps="")
    assert default > demo  # 100 steps of longer sequences
    # Twice the steps: the steps' share of the time doubles, the loading overhead does not.
    two, _, _ = _estimate(client, project, max_steps="2")
    four, _, _ = _estimate(client, project, max_steps="4")
    overhead = 3 * estimates.OVERHEAD_S["cpu"]
    assert four - overhead == pytest.approx(2 * (two - overhead), rel=0.05)
    # A GPU worker is about 2000× faster by the stated assumptions.
    worker_heartbeat_record(hostname="gpu-1", queue="gpu", device="cuda:NVIDIA H200")
    _, gpu_stages, html = _estimate(client, project, size="default", max_steps="")
    gpu_overhead, cpu_overhead = estimates.OVERHEAD_S["cuda"], estimates.OVERHEAD_S["cpu"]
    assert "on the workers' GPU" in html
    assert gpu_stages["sft"] - gpu_overhead < (default_stages["sft"] - cpu_overhead) / 100
    bad = _form(project, advanced='{"ppo": {"clip_range": 0}}')
    assert (
        b"No estimate until the settings are valid" in client.get("/training/launch/estimate/", bad).content
    )


def test_the_estimate_uses_the_speed_measured_on_finished_stages(world, enqueued_stages):
    project, base, _ = world
    run = run_services.training_run_launch(
        project=project, preset="sft", peft="lora", stage_configs={"sft": {"max_steps": 4}}
    )
    stage = run.stages.get()
    sizes = estimates.snapshot_file_sizes(content_hash=run.dataset_hash, counts=run.dataset_counts)
    assumed = estimates.stage_estimate(
        kind="sft", config=stage.config, num_parameters=base.num_parameters, sizes=sizes, device="cpu"
    )
    started = timezone.now() - timedelta(minutes=5)
    at = started.timestamp() + 20
    StageRun.objects.filter(pk=stage.pk).update(
        status="succeeded", device="cpu", step=4, started_at=started, finished_at=timezone.now(),
        metrics=[{"step": n, "values": {"loss": 1.0}, "at": at + 10 * (n - 1)} for n in range(1, 5)],
    )  # fmt: skip
    measured = estimates.stage_estimate(
        kind="sft", config=stage.config, num_parameters=base.num_parameters, sizes=sizes, device="cpu"
    )
    assert measured.seconds_per_step == pytest.approx(
        10.0
    )  # 10 s between timed steps, not the 5 min wall time
    assert measured.basis == "measured on 1 earlier sft stage on this CPU"
    assert assumed.basis.startswith("assumed")
    doubled = estimates.stage_estimate(
        kind="sft", config={**stage.config, "batch_size": stage.config["batch_size"] * 2},
        num_parameters=base.num_parameters, sizes=sizes, device="cpu",
    )  # fmt: skip
    assert doubled.seconds_per_step == pytest.approx(20.0)


def test_run_page_eta_before_the_first_step_then_measured_and_the_phase_of_a_long_step(
    client, world, enqueued_stages
):
    project, _, admin = world
    run = run_services.training_run_launch(
        project=project, preset="rlhf", peft="lora", stage_configs={"sft": {"max_steps": 5}}
    )
    first, _, ppo = run.stages.order_by("position")
    now = timezone.now()
    StageRun.objects.filter(pk=first.pk).update(
        status="running", device="cpu", started_at=now - timedelta(seconds=2)
    )
    TrainingRun.objects.filter(pk=run.pk).update(status="running", started_at=now)
    client.force_login(admin)
    html = client.get(f"/training/runs/{run.pk}/live/", HTTP_HX_REQUEST="true").content.decode()
    assert "(estimated before its first step)" in html
    assert 'data-testid="run-eta">about ' in html and "left for the whole run" in html

    at = now.timestamp()
    StageRun.objects.filter(pk=first.pk).update(
        step=2, metrics=[{"step": 1, "values": {"loss": 2.0}, "at": at}, {"step": 2, "values": {"loss": 1.5}, "at": at + 40}]
    )  # fmt: skip
    html = client.get(f"/training/runs/{run.pk}/live/", HTTP_HX_REQUEST="true").content.decode()
    assert "about 2 min left" in html and "(40 s per step, measured)" in html  # 3 steps × 40 s
    eta = estimates.run_eta(run=TrainingRun.objects.get(pk=run.pk))
    first_estimate = estimates._estimate_for(StageRun.objects.get(pk=first.pk), {}, "cpu")
    ratio = 40 / first_estimate.seconds_per_step
    ppo_estimate = estimates._estimate_for(ppo, estimates.snapshot_file_sizes(
        content_hash=run.dataset_hash, counts=run.dataset_counts), "cpu")  # fmt: skip
    # The later stages are scaled by how the run's own steps compare with their estimate.
    expected = ppo_estimate.seconds * min(max(ratio, 0.1), 10.0)
    assert eta.stages[ppo.pk].seconds_left == pytest.approx(expected, rel=0.2)

    StageRun.objects.filter(pk=first.pk).update(status="succeeded", finished_at=now)
    StageRun.objects.filter(pk=ppo.pk).update(
        status="running", device="cpu", started_at=now, step=0,
        phase={"step": 1, "phase": "rollout", "detail": "16 prompts, up to 64 new tokens each", "tokens": 1024},
    )  # fmt: skip
    html = client.get(f"/training/runs/{run.pk}/live/", HTTP_HX_REQUEST="true").content.decode()
    assert "step 1: rollout · 16 prompts, up to 64 new tokens each" in html

    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded")
    html = client.get(f"/training/runs/{run.pk}/live/", HTTP_HX_REQUEST="true").content.decode()
    assert 'data-testid="run-eta"' not in html and 'data-testid="stage-eta"' not in html


def test_reporter_writes_phases_and_times_each_step(settings, world, enqueued_stages):
    settings.TRAINING_PROGRESS_WRITE_S = 0
    project, _, _ = world
    run = run_services.training_run_launch(project=project, preset="rft", stage_configs={
        "ppo": {"rules": [{"kind": "keyword", "keywords": ["yes"]}]}})  # fmt: skip
    stage = run.stages.get(kind="ppo")
    reporter = StageReporter(stage, log_lines=__import__("collections").deque())
    reporter.on_progress(
        PhaseProgress(1, 4, "update", "1 epoch(s) over 16 rollouts, 900 tokens each epoch", 900)
    )
    stage.refresh_from_db()
    assert stage.phase["phase"] == "update" and stage.phase["tokens"] == 900 and stage.phase["step"] == 1
    assert stage.metrics == []  # a phase is not a step: no point on the charts
    before = timezone.now().timestamp()
    reporter.on_progress(StepMetrics(step=1, total_steps=4, values={"reward_mean": 0.5}))
    stage.refresh_from_db()
    assert stage.phase == {} and stage.step == 1
    assert before - 1 <= stage.metrics[0]["at"] <= timezone.now().timestamp() + 1
    assert "step 1: update, 1 epoch(s) over 16 rollouts" in reporter.log_lines[0]


def test_durations_read_as_a_person_plans():
    assert [estimates.format_duration(s) for s in (0.2, 45, 89, 150, 3600, 4500)] == [
        "1 s", "45 s", "1 min", "2 min", "1 h 00 min", "1 h 15 min",
    ]  # fmt: skip
    assert estimates.device_kind("cuda:NVIDIA H200") == "cuda" and estimates.device_kind("weird") == "cpu"


def test_data_size_counts_where_a_stage_goes_over_all_of_it():
    def seconds(kind, rows):
        sizes = {
            "pairwise": DataSize(rows=rows, chars_per_row=800),
            "sft": DataSize(rows=rows, chars_per_row=400),
        }
        return estimates.stage_estimate(
            kind=kind, config=config_defaults(kind), num_parameters=135_000_000, sizes=sizes, device="cpu"
        ).seconds

    assert (
        seconds("reward", 10_000) > seconds("reward", 100) + 60
    )  # the held-out evaluation of 10% of the pairs
    assert seconds("sft", 10_000) == seconds("sft", 100)  # steps × batch: the row count does not matter
    short = estimates.stage_estimate(
        kind="sft", config=config_defaults("sft"), num_parameters=135_000_000,
        sizes={"sft": DataSize(rows=100, chars_per_row=100)}, device="cpu",
    )  # fmt: skip
    assert short.seconds < seconds("sft", 100)  # shorter rows, fewer tokens per step


def test_a_stage_stored_with_a_partial_config_still_gets_an_eta(client, world):
    """Runs stored before a config field existed (or written by hand) keep a working run page."""
    project, base, admin = world
    run = TrainingRun.objects.create(project=project, preset="reward", base_model=base, status="running")
    StageRun.objects.create(
        run=run,
        position=0,
        kind="reward",
        status="running",
        step=0,
        total_steps=5,
        config={},
        started_at=timezone.now(),
    )
    client.force_login(admin)
    response = client.get(f"/training/runs/{run.pk}/")
    assert response.status_code == 200
    assert 'data-testid="run-eta">about ' in response.content.decode()
