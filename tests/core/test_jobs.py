"""The shared enqueue path (core.jobs) through a broker outage: a private redis-server that the test stops and
starts, real Celery workers, and the job maintenance pass that workers and web processes run on a timer."""

from __future__ import annotations

import time

import pytest
from django.conf import settings as django_settings
from django.contrib.messages import get_messages
from django.test import Client
from rest_framework.test import APIClient

from core.jobs import jobs_sweep
from exports import services as export_services
from exports.models import Export
from exports.services import export_create
from loop.models import SamplingJob
from tests.training.factories import (
    TINY_STAGE_CONFIGS,
    make_user,
    ranked_project,
    register_tiny_base,
)
from tests.workers import celery_worker, private_redis, wait_until
from training.models import TrainingRun
from training.services.runs import training_run_launch

pytestmark = pytest.mark.django_db(transaction=True)


def _client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _worker_env(**env) -> dict[str, str]:
    # A short maintenance period: the worker's own timer sends what the outage held back.
    return {"ARTIFACT_ROOT": str(django_settings.ARTIFACT_ROOT), "TRAINING_STALE_CHECK_S": "0.5", **env}


def _wait_export(export: Export, statuses: set[str], timeout: float = 60) -> Export:
    def reached():
        export.refresh_from_db()
        return export.status in statuses

    wait_until(reached, timeout=timeout, message=f"export #{export.pk} to reach {statuses}")
    return export


def test_export_posted_while_the_broker_is_down_is_kept_and_runs_once_it_is_back(tmp_path):
    project = ranked_project(slug="outage", prompts=4)
    researcher = make_user("outage-res", "researcher")
    with private_redis(tmp_path, running=False) as broker:
        response = _client(researcher).post(
            "/api/v1/exports/",
            {"project": "outage", "format": "pairwise", "file_type": "jsonl"},
            format="json",
        )
        assert response.status_code == 503, response.content
        body = response.json()
        assert body["job"] == "export" and body["status"] == "queued"
        assert (
            "unreachable" in body["detail"] and "starts by itself once the broker is back" in body["detail"]
        )
        export = Export.objects.get(pk=body["id"], project=project)
        assert export.status == Export.Status.QUEUED and export.enqueued_at is None

        assert jobs_sweep() == {}  # still down: nothing sent, nothing lost
        export.refresh_from_db()
        assert export.enqueued_at is None

        broker.start()
        # Nobody publishes again from here: the worker's maintenance pass finds the undelivered row and sends it.
        with celery_worker(broker_url=broker.url, queues="default", extra_env=_worker_env()):
            export = _wait_export(export, {Export.Status.SUCCEEDED, Export.Status.FAILED})
    assert export.status == Export.Status.SUCCEEDED, export.error
    assert export.enqueued_at is not None and export.celery_task_id
    assert export.rows > 0 and (django_settings.ARTIFACT_ROOT / export.path).is_file()


def test_training_run_posted_while_the_broker_is_down_is_kept_and_the_sweep_sends_its_first_stage(
    tmp_path, tiny_model_dir
):
    project = ranked_project(slug="outage-run", prompts=4)
    register_tiny_base(tiny_model_dir)
    admin = make_user("outage-admin", "admin")
    payload = {"project": "outage-run", "preset": "sft", "stage_configs": {"sft": TINY_STAGE_CONFIGS["sft"]}}
    with private_redis(tmp_path, running=False) as broker:
        response = _client(admin).post("/api/v1/training-runs/", payload, format="json")
        assert response.status_code == 503, response.content
        body = response.json()
        assert body["job"] == "training run" and "is saved and queued" in body["detail"]
        run = TrainingRun.objects.get(pk=body["id"], project=project)
        stage = run.stages.get()
        assert run.status == TrainingRun.Status.QUEUED and stage.enqueued_at is None
        web = Client()
        web.force_login(admin)
        page = web.get(f"/training/runs/{run.pk}/").content.decode()
        assert 'data-testid="undelivered"' in page and "sent by itself once the queue is back" in page

        broker.start()
        assert broker.queue_length("gpu") == 0
        assert jobs_sweep() == {"training stage": [stage.pk]}
        assert broker.queue_length("gpu") == 1  # one message, waiting for a gpu worker
        stage.refresh_from_db()
        assert stage.enqueued_at is not None and stage.celery_task_id
        assert 'data-testid="undelivered"' not in web.get(f"/training/runs/{run.pk}/").content.decode()
        assert jobs_sweep() == {}  # sent recently and not picked up yet: not sent twice
        assert broker.queue_length("gpu") == 1


def test_sampling_page_while_the_broker_is_down_says_the_job_is_queued(tmp_path, tiny_model_dir, client):
    project = ranked_project(slug="outage-sampling", prompts=2)
    base = register_tiny_base(tiny_model_dir)
    client.force_login(make_user("outage-sampler", "admin"))
    form = {
        "project": project.slug, "model_version": base.pk, "pool": "all", "limit": "", "max_new_tokens": 4,
        "temperature": 0.7, "top_p": 0.95, "make_comparisons": "on", "uncertain_share": 0.5,
    }  # fmt: skip
    with private_redis(tmp_path, running=False):
        response = client.post("/loop/sampling/", form)
    assert response.status_code == 302, response.content[-2000:]
    job = SamplingJob.objects.get()
    assert job.status == SamplingJob.Status.QUEUED and job.enqueued_at is None
    shown = [str(message) for message in get_messages(response.wsgi_request)]
    assert any(f"Sampling job #{job.pk} is saved and queued" in message for message in shown), shown


def test_cancelled_export_is_skipped_by_the_worker_and_retry_runs_it(tmp_path):
    project = ranked_project(slug="cancel-export", prompts=4)
    researcher = make_user("cancel-res", "researcher")
    api = _client(researcher)
    with private_redis(tmp_path) as broker:
        export = export_create(project=project, format="pairwise", file_type="jsonl", created_by=researcher)
        assert broker.queue_length("default") == 1  # published, no worker yet

        response = api.post(f"/api/v1/exports/{export.pk}/cancel/")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        again = api.post(f"/api/v1/exports/{export.pk}/cancel/")
        assert again.status_code == 400 and "cancelled" in again.json()["status"][0]

        with celery_worker(broker_url=broker.url, queues="default", extra_env=_worker_env()):
            wait_until(lambda: broker.queue_length("default") == 0, message="the worker to take the message")
            export.refresh_from_db()
            assert export.status == Export.Status.CANCELLED and not export.path  # the message did nothing

            response = api.post(f"/api/v1/exports/{export.pk}/retry/")
            assert response.status_code == 202 and response.json()["status"] == "queued"
            export = _wait_export(export, {Export.Status.SUCCEEDED, Export.Status.FAILED})
            assert export.status == Export.Status.SUCCEEDED, export.error
            assert (django_settings.ARTIFACT_ROOT / export.path).is_file()

            done = api.post(f"/api/v1/exports/{export.pk}/retry/")
            assert done.status_code == 400 and "succeeded" in done.json()["status"][0]


def test_duplicate_messages_run_an_export_once(tmp_path):
    project = ranked_project(slug="dup-export", prompts=3)
    researcher = make_user("dup-res", "researcher")
    with private_redis(tmp_path) as broker:
        export = export_create(project=project, format="pairwise", file_type="jsonl", created_by=researcher)
        export_services.export_enqueue(export=export)  # a second message for the same row
        assert broker.queue_length("default") == 2
        with celery_worker(broker_url=broker.url, queues="default", extra_env=_worker_env()):
            export = _wait_export(export, {Export.Status.SUCCEEDED, Export.Status.FAILED})
            wait_until(lambda: broker.queue_length("default") == 0, message="both messages consumed")
            first_finish = export.finished_at
            export.refresh_from_db()
    assert export.status == Export.Status.SUCCEEDED and export.finished_at == first_finish


def test_cancelling_a_running_export_stops_it_and_leaves_no_files(monkeypatch):
    project = ranked_project(slug="cancel-running", prompts=4)
    researcher = make_user("cancel-running-res", "researcher")
    export = export_create(
        project=project, format="pairwise", file_type="jsonl", created_by=researcher, enqueue=False
    )
    estimate = export_services.export_estimate

    def cancel_while_running(
        **kwargs,
    ):  # the researcher presses cancel once the worker has claimed the export
        assert Export.objects.get(pk=export.pk).status == Export.Status.RUNNING
        export_services.export_cancel(export=export)
        return estimate(**kwargs)

    monkeypatch.setattr(export_services, "export_estimate", cancel_while_running)
    result = export_services.export_run(export_id=export.pk)
    assert result.status == Export.Status.CANCELLED and not result.path
    folder = django_settings.ARTIFACT_ROOT / export_services.export_relative_dir(result)
    assert not folder.exists()


def test_a_stage_sent_long_ago_and_never_picked_up_is_sent_again(tmp_path, tiny_model_dir, settings):
    settings.JOBS_REDELIVER_AFTER_S = 3
    project = ranked_project(slug="lost-message", prompts=4)
    register_tiny_base(tiny_model_dir)
    with private_redis(tmp_path) as broker:
        run = training_run_launch(
            project=project, preset="sft", stage_configs={"sft": TINY_STAGE_CONFIGS["sft"]}
        )
        stage = run.stages.get()
        assert broker.queue_length("gpu") == 1
        broker.stop()  # Redis restarts without persistence: the message is gone
        broker.start()
        assert broker.queue_length("gpu") == 0
        assert jobs_sweep() == {}  # sent a moment ago: probably just waiting for a worker
        time.sleep(settings.JOBS_REDELIVER_AFTER_S + 0.2)
        assert jobs_sweep() == {"training stage": [stage.pk]}
        assert broker.queue_length("gpu") == 1
