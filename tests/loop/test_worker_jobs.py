"""Jobs of the `default` queue through a real Celery worker on Redis: sampling and dataset exports."""

import json
import os
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from exports.models import Export
from exports.services import export_create
from exports.writers import export_write
from labeling.models import Comparison, ImportJob, Prompt, Response
from labeling.services.import_jobs import import_job_create
from loop.models import SamplingJob
from loop.services.sampling import sampling_job_create
from tests.loop.test_loop import reference_project
from tests.training.factories import TINY_STAGE_CONFIGS, make_user, ranked_project, register_tiny_base
from tests.workers import celery_worker, wait_until
from training.models import StageRun
from training.services import runs as run_services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


@pytest.fixture
def default_worker(settings):
    url = os.environ.get("REDIS_TEST_URL")
    if not url:
        pytest.skip("REDIS_TEST_URL is not set; `make test` starts Redis and sets it")
    assert settings.CELERY_BROKER_URL == url
    extra_env = {
        "ARTIFACT_ROOT": str(django_settings.ARTIFACT_ROOT),
        # Exports in this worker take the parallel path (Postgres) however small they are.
        "LABELING_EXPORT_WORKERS": "2",
        "LABELING_EXPORT_PARALLEL_MIN_COMPARISONS": "1",
    }
    with celery_worker(broker_url=url, queues="default", extra_env=extra_env) as worker:
        yield worker


def test_sampling_job_runs_on_the_default_queue_worker(tiny_model_dir, default_worker):
    project = reference_project(slug="worker-sampling", prompts=3)
    base = register_tiny_base(tiny_model_dir)
    job = sampling_job_create(project=project, model_version=base, params={"max_new_tokens": 4})

    def finished():
        job.refresh_from_db()
        return job.status in (SamplingJob.Status.SUCCEEDED, SamplingJob.Status.FAILED)

    wait_until(finished, timeout=120, message="the sampling job")
    assert job.status == SamplingJob.Status.SUCCEEDED, job.error
    assert job.celery_task_id and job.device == "cpu"
    assert Response.objects.filter(model_version=base).count() == 3
    assert Comparison.objects.filter(project=project).count() == job.comparisons_created == 6


def test_export_job_runs_on_the_default_queue_worker(default_worker, tmp_path):
    project = ranked_project(slug="worker-export", prompts=5)
    researcher = make_user("res", "researcher")
    export = export_create(project=project, format="pairwise", file_type="jsonl", created_by=researcher)

    def finished():
        export.refresh_from_db()
        return export.status in (Export.Status.SUCCEEDED, Export.Status.FAILED)

    wait_until(finished, timeout=120, message="the export job")
    assert export.status == Export.Status.SUCCEEDED, export.error
    assert export.rows == 5
    exported = Path(django_settings.ARTIFACT_ROOT) / export.path
    assert exported.is_file() and len(exported.read_text().splitlines()) == 5
    assert len(export.content_hash) == 64
    # The same file as one process here writes (the worker's export ran in worker processes on Postgres).
    here = export_write(
        project=project, format="pairwise", file_type="jsonl", dest=tmp_path / "here.jsonl", workers=1
    )
    assert export.content_hash == here.content_hash
    assert exported.read_bytes() == here.path.read_bytes()


def test_import_job_runs_on_the_default_queue_worker(default_worker):
    """A large upload's job goes through the broker to a real worker, which imports from the kept file."""
    lines = [{"external_id": f"q{i}", "prompt": f"Question {i}?"} for i in range(50)]
    lines += [
        {"prompt_external_id": f"q{i}", "content": f"answer {i} {s}", "source": s}
        for i in range(50)
        for s in "ab"
    ]
    data = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    admin = make_user("imp-admin", "admin")
    job = import_job_create(
        project_slug="worker-import",
        file_name="big.jsonl",
        data=data,
        file_format="jsonl",
        build_k=2,
        created_by=admin,
    )
    kept = Path(django_settings.ARTIFACT_ROOT) / job.upload_path
    assert kept.read_bytes() == data

    def finished():
        job.refresh_from_db()
        return job.finished

    wait_until(finished, timeout=120, message="the import job")
    assert job.status == ImportJob.Status.SUCCEEDED, (job.error, job.errors)
    assert job.celery_task_id and job.progress == 1.0 and job.rows_done == 150
    assert job.counts["prompts_created"] == 50 and job.counts["comparisons_built"] == 50
    assert Prompt.objects.filter(project__slug="worker-import").count() == 50
    assert not kept.exists() and job.upload_path == ""


@pytest.mark.slow
def test_export_and_sampling_finish_while_a_training_stage_runs(tiny_model_dir, default_worker):
    """One worker per queue, as `make demo` and compose start them: `default` jobs never wait behind a stage."""
    project = ranked_project(slug="busy-gpu", prompts=8)
    base = register_tiny_base(tiny_model_dir)
    long_sft = {**TINY_STAGE_CONFIGS["sft"], "max_steps": 400, "checkpoint_every": 1000}
    run = run_services.training_run_launch(project=project, preset="sft", stage_configs={"sft": long_sft})
    stage = run.stages.get()
    gpu_env = {"ARTIFACT_ROOT": str(django_settings.ARTIFACT_ROOT), "TRAINING_PROGRESS_WRITE_S": "0"}
    with celery_worker(broker_url=django_settings.CELERY_BROKER_URL, queues="gpu", extra_env=gpu_env):

        def training():
            stage.refresh_from_db()
            return stage.status == StageRun.Status.RUNNING and stage.step >= 1

        wait_until(training, timeout=120, message="the training stage to make its first step")
        researcher = make_user("busy-res", "researcher")
        export = export_create(project=project, format="pairwise", file_type="jsonl", created_by=researcher)
        job = sampling_job_create(project=project, model_version=base, params={"max_new_tokens": 4}, limit=2)

        def default_jobs_done():
            export.refresh_from_db()
            job.refresh_from_db()
            return export.status == Export.Status.SUCCEEDED and job.status == SamplingJob.Status.SUCCEEDED

        wait_until(default_jobs_done, timeout=120, message="the export and the sampling job")
        stage.refresh_from_db()
        assert stage.status == StageRun.Status.RUNNING and stage.step < long_sft["max_steps"], (
            "the stage was not running any more: this proves nothing"
        )
        run_services.training_run_cancel(run=run)
    assert export.rows == 8 and job.responses_created == 2
