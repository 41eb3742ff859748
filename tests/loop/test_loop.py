"""Sampling, active selection, simulated annotators and the leaderboard on the tiny model."""

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from labeling.models import Comparison, Project, Prompt, Ranking, Response
from labeling.services.leasing import assignment_lease_next
from loop.models import SamplingJob
from loop.selectors import leaderboard, ranking_outcomes
from loop.services import sampling as sampling_services
from loop.services.sampling import sampling_job_create
from loop.services.sampling_execution import reward_model_scorer, sampling_job_execute
from loop.services.simulation import annotators_simulate
from registry.artifacts import base_model_folder
from registry.services import model_version_register
from tests.training.factories import make_user, register_tiny_base
from training.engine import reward_model as reward_stage
from training.engine.base_model import describe_saved_model
from training.engine.common import ModelRef, StageInputs

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent_jobs(monkeypatch) -> list[int]:
    """Sampling jobs whose task would be published once committed (tests run them here instead)."""
    sent: list[int] = []
    monkeypatch.setattr(
        sampling_services, "sampling_job_enqueue", lambda *, job, quiet=False: sent.append(job.pk)
    )
    return sent


def reference_project(*, slug="ref", prompts=6, mode="pairwise", k=2) -> Project:
    project = Project(slug=slug, name=slug, mode=mode, k=k, overlap=1, gold_ratio=0.0)
    project.full_clean()
    project.save()
    for n in range(prompts):
        prompt = Prompt.objects.create(
            project=project, external_id=f"q{n}", messages=[{"role": "user", "content": f"Say hi number {n}"}]
        )
        for i, text in enumerate(
            ["Thanks for asking! Happy to help.", f"no {n}", f"maybe {'x' * n}"][
                : max(k, 2) + (mode == "ranking")
            ]
        ):
            Response.objects.create(prompt=prompt, external_id=f"ref{i}", content=text, source_name=f"ref{i}")
    return project


@pytest.fixture(scope="module")
def tiny_reward_dir(tiny_model_dir, tmp_path_factory):
    """A tiny reward model trained for a few steps: fixed weights, so its scores are a fixed function."""
    rows = [
        {"prompt": [{"role": "user", "content": f"Say hi number {n}"}],
         "chosen": [{"role": "assistant", "content": "Thanks for asking! Happy to help."}],
         "rejected": [{"role": "assistant", "content": f"no {n}"}]}
        for n in range(8)
    ]  # fmt: skip
    from datasets import Dataset

    out = tmp_path_factory.mktemp("rm") / "reward"
    config = reward_stage.RewardStageConfig(
        max_steps=4,
        batch_size=4,
        max_length=48,
        learning_rate=1e-3,
        checkpoint_every=0,
        held_out_fraction=0.0,
    )
    result = reward_stage.run(config, StageInputs(Dataset.from_list(rows), ModelRef(tiny_model_dir), out))
    return result.artifact_path


def register_reward(path: Path):
    import shutil

    target = base_model_folder("tiny-reward")
    shutil.copytree(path, target)
    return model_version_register(
        name="tiny-reward", kind="reward", saved=describe_saved_model(target), source="tests"
    )


def test_sampling_generates_records_params_and_builds_comparisons(
    tiny_model_dir, sent_jobs, django_capture_on_commit_callbacks
):
    project = reference_project(prompts=5)
    base = register_tiny_base(tiny_model_dir)
    with django_capture_on_commit_callbacks(execute=True):
        job = sampling_job_create(
            project=project,
            model_version=base,
            params={"max_new_tokens": 6, "batch_size": 2},
            uncertain_share=0.0,
        )
    assert sent_jobs == [job.pk] and job.status == SamplingJob.Status.QUEUED
    assert sampling_job_execute(job_id=job.pk) == SamplingJob.Status.SUCCEEDED
    job.refresh_from_db()
    assert (job.total, job.done, job.responses_created) == (5, 5, 5) and job.device == "cpu"
    generated = Response.objects.filter(model_version=base)
    assert generated.count() == 5
    assert generated.first().generation_params["max_new_tokens"] == 6
    # Pairwise project: the new answer against each of the 2 reference answers per prompt.
    assert job.comparisons_created == 10
    assert Comparison.objects.filter(project=project).count() == 10
    # The pool "new" is now empty for this model: sampling again adds nothing.
    again = sampling_job_create(project=project, model_version=base, params={"max_new_tokens": 6})
    sampling_job_execute(job_id=again.pk)
    again.refresh_from_db()
    assert again.total == 0 and Response.objects.filter(model_version=base).count() == 5


def test_ranking_project_gets_k_way_comparisons(tiny_model_dir, sent_jobs):
    project = reference_project(slug="kway", prompts=2, mode="ranking", k=3)
    base = register_tiny_base(tiny_model_dir)
    job = sampling_job_create(
        project=project, model_version=base, params={"max_new_tokens": 4}, uncertain_share=0.0
    )
    sampling_job_execute(job_id=job.pk)
    assert {c.k for c in Comparison.objects.filter(project=project)} == {3}
    assert Comparison.objects.filter(project=project).count() == 2


def test_active_selection_orders_comparisons_by_reward_margin(tiny_model_dir, tiny_reward_dir, sent_jobs):
    project = reference_project(prompts=6)
    base = register_tiny_base(tiny_model_dir)
    reward = register_reward(tiny_reward_dir)
    job = sampling_job_create(
        project=project,
        model_version=base,
        params={"max_new_tokens": 6},
        uncertain_share=1.0,
        reward_model=reward,
    )
    sampling_job_execute(job_id=job.pk)
    score = reward_model_scorer(reward)
    comparisons = list(Comparison.objects.filter(project=project).prefetch_related("responses__prompt"))
    margins = {}
    for comparison in comparisons:
        scores = score(list(comparison.responses.all()))
        margins[comparison.pk] = abs(max(scores.values()) - min(scores.values()))
    by_priority = [c.pk for c in sorted(comparisons, key=lambda c: -c.priority)]
    by_margin = sorted(margins, key=lambda pk: margins[pk])
    assert by_priority == by_margin
    assert len({round(m, 6) for m in margins.values()}) > 3  # the order is decided by real, distinct margins
    # Leasing serves the smallest-margin comparison first.
    person = make_user("ann", "annotator")
    assert assignment_lease_next(project=project, annotator=person).comparison_id == by_margin[0]


def test_uncertain_share_boosts_only_that_share(tiny_model_dir, tiny_reward_dir, sent_jobs):
    project = reference_project(prompts=4)
    base = register_tiny_base(tiny_model_dir)
    reward = register_reward(tiny_reward_dir)
    job = sampling_job_create(
        project=project,
        model_version=base,
        params={"max_new_tokens": 4},
        uncertain_share=0.25,
        reward_model=reward,
    )
    sampling_job_execute(job_id=job.pk)
    priorities = sorted(
        Comparison.objects.filter(project=project).values_list("priority", flat=True), reverse=True
    )
    assert len(priorities) == 8 and sum(p > 0 for p in priorities) == 2


def test_simulated_annotators_rank_through_the_services(tiny_model_dir, sent_jobs):
    project = reference_project(prompts=4)
    project.overlap = 2
    project.save()
    base = register_tiny_base(tiny_model_dir)
    sampling_job_execute(
        job_id=sampling_job_create(project=project, model_version=base, params={"max_new_tokens": 4}).pk
    )
    call_command(
        "simulate_annotators", "--project", project.slug, "--oracle", "keyword:thanks", "--annotators", "3"
    )
    comparisons = Comparison.objects.filter(project=project)
    # Overlap 2 respected although 3 annotators tried.
    assert Ranking.objects.count() == 2 * comparisons.count()
    for ranking in Ranking.objects.select_related("comparison"):
        contents = {str(r.pk): r.content for r in ranking.comparison.responses.all()}
        best = [rid for rid, rank in ranking.ranks.items() if rank == 1]
        if any("Thanks" in contents[rid] for rid in ranking.ranks):
            assert all("Thanks" in contents[rid] for rid in best)
    with pytest.raises(CommandError, match="unknown oracle"):
        call_command("simulate_annotators", "--project", project.slug, "--oracle", "import os")


def test_leaderboard_from_rankings_and_page(client, tiny_model_dir, sent_jobs):
    project = reference_project(prompts=6)
    base = register_tiny_base(tiny_model_dir)
    sampling_job_execute(
        job_id=sampling_job_create(project=project, model_version=base, params={"max_new_tokens": 4}).pk
    )
    annotators_simulate(project=project, oracle="keyword:thanks")
    outcomes = ranking_outcomes(project=project)
    assert len(outcomes) == 12
    board = leaderboard(project=project, bootstrap=50)
    assert board.ratings[0].model == "external: ref0"  # the only answer with the keyword wins every game
    client.force_login(make_user("res", "researcher"))
    page = client.get(f"/leaderboard/{project.slug}/")
    assert (
        page.status_code == 200 and b"external: ref0" in page.content and b"leaderboard-data" in page.content
    )
    client.force_login(make_user("ann", "annotator"))
    assert client.get(f"/leaderboard/{project.slug}/").status_code == 403


def test_sampling_page_permissions_and_validation(
    client, tiny_model_dir, sent_jobs, django_capture_on_commit_callbacks
):
    project = reference_project(prompts=2)
    base = register_tiny_base(tiny_model_dir)
    client.force_login(make_user("res", "researcher"))
    assert client.get("/loop/sampling/").status_code == 403
    client.force_login(make_user("boss", "admin"))
    assert client.get("/loop/sampling/").status_code == 200
    form = {"project": project.slug, "model_version": base.pk, "pool": "new", "max_new_tokens": 0, "temperature": 0.7,
            "top_p": 0.9, "uncertain_share": 0.5}  # fmt: skip
    response = client.post("/loop/sampling/", form)
    assert response.status_code == 422 and "max_new_tokens" in response.context["form"].errors
    assert SamplingJob.objects.count() == 0
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/loop/sampling/", {**form, "max_new_tokens": 8})
    assert response.status_code == 302 and sent_jobs == [SamplingJob.objects.get().pk]
    assert b"sampling-jobs" in client.get("/loop/sampling/jobs/", HTTP_HX_REQUEST="true").content


def test_sample_command_runs_here(tiny_model_dir, sent_jobs, capsys, django_capture_on_commit_callbacks):
    project = reference_project(prompts=2)
    base = register_tiny_base(tiny_model_dir)
    with django_capture_on_commit_callbacks(execute=True):
        call_command(
            "sample",
            "--model-version",
            str(base.pk),
            "--project",
            project.slug,
            "--here",
            "--params",
            '{"max_new_tokens": 4}',
        )
    assert "2 responses, 4 new comparisons" in capsys.readouterr().out
    assert sent_jobs == []  # --here does not also enqueue it


def test_sampling_params_and_options_refuse_strings_booleans_and_unrealistic_values():
    from django.core.exceptions import ValidationError

    for params, name in [
        ({"temperature": "0.7"}, "temperature"),  # was coerced by float()
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"batch_size": 10**6}, "batch_size"),
        ({"seed": 2**70}, "seed"),
        ({"beams": 4}, "beams"),
    ]:
        with pytest.raises(ValidationError) as excinfo:
            sampling_services.sampling_params_validate(params)
        assert excinfo.value.message_dict["params"][0].startswith(f"{name}: "), excinfo.value.message_dict
    assert sampling_services.sampling_params_validate({"temperature": 0})["temperature"] == 0
    with pytest.raises(ValidationError) as excinfo:
        sampling_services.sampling_options_validate(
            {"limit": 2.5, "make_comparisons": "yes", "params": {"temperature": -1}, "colour": 1}
        )
    assert set(excinfo.value.message_dict) == {"limit", "make_comparisons", "params.temperature", "colour"}
    options = {"pool": "all", "limit": 3, "uncertain_share": 1, "params": {"top_p": 0.9}}
    assert sampling_services.sampling_options_validate(options) == options
