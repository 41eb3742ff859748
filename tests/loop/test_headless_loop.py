"""The whole loop headless on the tiny model: seed → simulate → train round → sample → simulate → leaderboard."""

import pytest

from labeling.models import Project, Prompt, Response
from loop.oracles import oracle_ranks
from loop.selectors import leaderboard
from loop.services import sampling as sampling_services
from loop.services.sampling import sampling_job_create
from loop.services.sampling_execution import sampling_job_execute
from loop.services.simulation import annotators_simulate
from registry.models import ModelVersion
from tests.training.factories import register_tiny_base
from training.models import TrainingRun

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

ORACLE = "keyword:thanks"
HELPFUL = "Thanks for asking! Happy to help."
UNHELPFUL = ["no", "Go away.", "I will not answer that.", "Whatever.", "Ask someone else.", "Not my problem."]


def test_headless_round_learns_the_oracle_and_beats_the_base(
    tiny_model_dir, launch, drain_stages, monkeypatch, django_capture_on_commit_callbacks
):
    # A sampling job runs here as soon as it is committed, as a worker would pick it up.
    monkeypatch.setattr(
        sampling_services,
        "sampling_job_enqueue",
        lambda *, job, quiet=False: sampling_job_execute(job_id=job.pk),
    )

    # Seed: prompts with a helpful and an unhelpful reference answer each.
    project = Project(slug="headless", name="headless", mode="pairwise", k=2, overlap=1, gold_ratio=0.0)
    project.full_clean()
    project.save()
    for n in range(32):
        prompt = Prompt.objects.create(
            project=project,
            external_id=f"q{n}",
            messages=[{"role": "user", "content": f"Can you help me with task {n}?"}],
        )
        Response.objects.create(prompt=prompt, external_id="good", content=HELPFUL, source_name="helpful-ref")
        Response.objects.create(
            prompt=prompt,
            external_id="bad",
            content=UNHELPFUL[n % len(UNHELPFUL)],
            source_name="unhelpful-ref",
        )
    base = register_tiny_base(tiny_model_dir)

    # The base policy answers; every answer is compared with the references; the oracle ranks them all.
    with django_capture_on_commit_callbacks(execute=True):
        sampling_job_create(
            project=project, model_version=base, params={"max_new_tokens": 12, "temperature": 0.0}
        )
    annotators_simulate(project=project, oracle=ORACLE)

    # One RLHF round on those rankings, sampling from the new policy afterwards.
    run = launch(
        project=project, preset="rlhf", peft={"sft": "full", "reward": "full", "ppo": "lora"},
        stage_configs={
            "sft": {"max_steps": 40, "batch_size": 8, "max_length": 64, "learning_rate": 3e-3, "checkpoint_every": 0},
            "reward": {"max_steps": 30, "batch_size": 8, "max_length": 64, "learning_rate": 1e-3, "checkpoint_every": 0,
                       "held_out_fraction": 0.25},
            "ppo": {"max_steps": 2, "batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 12,
                    "max_length": 64, "learning_rate": 1e-5, "checkpoint_every": 0},
        },
        sample_after={"params": {"max_new_tokens": 12, "temperature": 0.0}},
    )  # fmt: skip
    drain_stages(worker="headless")
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error

    reward_version = ModelVersion.objects.get(produced_by_stage__run=run, kind="reward")
    assert reward_version.metrics["held_out_accuracy"] >= 0.9
    policy = ModelVersion.objects.filter(produced_by_stage__run=run, kind="policy").order_by("-id").first()
    assert policy.produced_by_stage.kind == "ppo"

    # The run asked for sampling: the new policy's answers are already there and in comparisons.
    new_answers = {r.prompt_id: r.content for r in Response.objects.filter(model_version=policy)}
    base_answers = {r.prompt_id: r.content for r in Response.objects.filter(model_version=base)}
    assert len(new_answers) == len(base_answers) == 32

    # Oracle win rate of the trained policy over the base policy, prompt by prompt (ties count half).
    score = 0.0
    for prompt_id, answer in new_answers.items():
        ranks = oracle_ranks(
            rule=ORACLE, prompt="", responses=[(1, answer), (2, base_answers[prompt_id])], allow_ties=True
        )
        score += 1.0 if ranks["1"] < ranks["2"] else 0.5 if ranks["1"] == ranks["2"] else 0.0
    win_rate = score / len(new_answers)
    assert win_rate >= 0.75, f"win rate {win_rate:.2f}; new answers: {list(new_answers.values())[:3]}"

    # Annotators rank the new comparisons; the leaderboard puts the trained policy above the base.
    annotators_simulate(project=project, oracle=ORACLE)
    ratings = {r.model: r for r in leaderboard(project=project, bootstrap=100).ratings}
    trained = ratings[f"#{policy.pk} {policy.name}"]
    start = ratings[f"#{base.pk} {base.name}"]
    assert trained.elo > start.elo
    assert trained.elo_low > start.elo_high  # the intervals do not overlap
