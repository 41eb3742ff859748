"""Import jobs (large uploads in the background, with progress) and the one set of upload rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse
from rest_framework.test import APIClient

from labeling.models import Comparison, ImportJob, Prompt
from labeling.services import import_jobs
from labeling.services.import_jobs import import_job_create, import_job_run

from .test_imports import jsonl

pytestmark = pytest.mark.django_db

GOOD = jsonl(
    {"external_id": "q1", "prompt": "One?"},
    {"prompt_external_id": "q1", "content": "a", "source": "m1"},
    {"prompt_external_id": "q1", "content": "b", "source": "m2"},
)
BAD = jsonl({"external_id": "q1", "prompt": "One?"}, {"prompt": ""}, {"prompt": 7})


@pytest.fixture
def background(settings, monkeypatch):
    """Every upload above 10 bytes is a background job; collect the ids of the jobs that would go to the queue
    once committed (run the call inside `django_capture_on_commit_callbacks(execute=True)`)."""
    settings.LABELING_IMPORT_SYNC_MAX_BYTES = 10
    queued: list[int] = []
    monkeypatch.setattr(import_jobs, "import_job_enqueue", lambda *, job: queued.append(job.pk))
    return queued


def _kept_file(job: ImportJob) -> Path:
    return Path(django_settings.ARTIFACT_ROOT) / job.upload_path


def test_a_large_upload_is_a_job_whose_page_polls_until_it_is_done(
    client, admin_user, background, django_capture_on_commit_callbacks
):
    client.force_login(admin_user)
    upload = SimpleUploadedFile("big.jsonl", GOOD, content_type="application/octet-stream")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("labeling:import"), {"project": "bg", "file": upload, "build_k": "2", "pairing": "all"}
        )
    job = ImportJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "labeling:import_job", args=[job.pk]
    )
    assert background == [job.pk] and job.status == ImportJob.Status.QUEUED
    assert _kept_file(job).read_bytes() == GOOD  # kept until the job has finished
    assert not Prompt.objects.exists()
    page = client.get(response["Location"]).content.decode()
    assert 'hx-trigger="every 1s"' in page and "Queued" in page

    job = import_job_run(job_id=job.pk)
    assert job.status == ImportJob.Status.SUCCEEDED and job.progress == 1.0 and job.finished_at
    assert job.counts["prompts_created"] == 1 and job.counts["responses_created"] == 2
    assert job.counts["comparisons_built"] == 1 and job.rows_done == job.rows_total == 3 and job.lines == 3
    assert job.upload_path == "" and not list((Path(django_settings.ARTIFACT_ROOT) / "imports").iterdir())
    partial = client.get(response["Location"], HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in partial and "<html" not in partial  # finished: the polling stops
    assert "Imported: 3 lines: 1 prompts new" in partial
    assert f"#{job.pk}" in client.get(reverse("labeling:import")).content.decode()  # recent imports


def test_a_bad_large_upload_fails_with_every_bad_line_and_imports_nothing(client, admin_user, background):
    client.force_login(admin_user)
    client.post(
        reverse("labeling:import"),
        {"project": "bg", "file": SimpleUploadedFile("b.jsonl", BAD), "pairing": "all"},
    )
    job = import_job_run(job_id=ImportJob.objects.get().pk)
    assert job.status == ImportJob.Status.FAILED and job.upload_path == ""
    page = client.get(reverse("labeling:import_job", args=[job.pk])).content.decode()
    assert "Nothing was imported." in page
    assert "line 2, field &#x27;prompt&#x27;: must not be empty" in page
    assert "line 3, field &#x27;prompt&#x27;: must be a string" in page
    assert not Prompt.objects.exists() and not Comparison.objects.exists()
    api = APIClient()
    api.force_authenticate(admin_user)
    detail = api.get(f"/api/v1/import-jobs/{job.pk}/").json()
    assert detail["status"] == "failed" and detail["errors"][0] == "line 2, field 'prompt': must not be empty"


def test_a_job_whose_worker_died_runs_again_from_the_kept_file(admin_user, background):
    job = import_job_create(
        project_slug="again", file_name="f.jsonl", data=GOOD, file_format="jsonl", created_by=admin_user
    )
    ImportJob.objects.filter(pk=job.pk).update(status=ImportJob.Status.RUNNING)  # the worker was killed
    job = import_job_run(job_id=job.pk)
    assert (
        job.status == ImportJob.Status.SUCCEEDED and Prompt.objects.filter(project__slug="again").count() == 1
    )
    assert import_job_run(job_id=job.pk).counts == job.counts  # a finished job is left alone


def test_a_small_upload_imports_during_the_request_through_the_same_job(client, admin_user):
    client.force_login(admin_user)
    response = client.post(
        reverse("labeling:import"),
        {"project": "now", "file": SimpleUploadedFile("s.jsonl", GOOD), "pairing": "all"},
    )
    assert response.status_code == 302 and response["Location"] == reverse("labeling:dashboard", args=["now"])
    job = ImportJob.objects.get()
    assert job.status == ImportJob.Status.SUCCEEDED and job.upload_path == "" and job.celery_task_id == ""


def test_the_api_answers_a_large_upload_with_its_job(
    admin_user, background, django_capture_on_commit_callbacks
):
    api = APIClient()
    api.force_authenticate(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/api/v1/prompts/import/",
            {"project": "api-bg", "file": SimpleUploadedFile("f.jsonl", GOOD)},
            format="multipart",
        )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["project"] == "api-bg" and background == [body["id"]]
    import_job_run(job_id=body["id"])
    detail = api.get(f"/api/v1/import-jobs/{body['id']}/").json()
    assert (
        detail["status"] == "succeeded"
        and detail["progress"] == 1.0
        and detail["counts"]["prompts_created"] == 1
    )
    assert api.get("/api/v1/import-jobs/").json()["results"][0]["id"] == body["id"]


@pytest.mark.django_db(transaction=True)
def test_progress_is_visible_while_the_import_transaction_is_open(admin_user, monkeypatch, settings):
    """Other connections (the job page) see the writing phase advance before the import commits (Postgres)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer: there only phase changes are written")
    settings.LABELING_IMPORT_SYNC_MAX_BYTES = 10
    monkeypatch.setattr(import_jobs, "PROGRESS_WRITE_S", 0.0)
    seen: list[tuple] = []
    real_row = import_jobs._JobProgress.row

    def row(self, count):
        real_row(self, count)
        import threading

        def peek():
            seen.append(ImportJob.objects.values_list("phase", "rows_done").get(pk=self.job_id))
            connection.close()

        thread = threading.Thread(target=peek)
        thread.start()
        thread.join()

    monkeypatch.setattr(import_jobs._JobProgress, "row", row)
    job = import_job_create(project_slug="seen", file_name="f.jsonl", data=GOOD, file_format="jsonl",
                            created_by=admin_user, enqueue=False)  # fmt: skip
    import_job_run(job_id=job.pk)
    assert seen and seen[-1] == ("write", 3), seen


# --- one set of upload rules: the page, the API and the CLI -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type", "needle"),
    [
        ("tool.exe", "application/x-msdownload", "Upload a .jsonl, .ndjson or .csv file, not 'tool.exe'."),
        ("data.jsonl.exe", "application/octet-stream", "Upload a .jsonl, .ndjson or .csv file"),
        (
            "data.jsonl",
            "application/x-msdownload",
            "A .jsonl file cannot have the content type 'application/x-msdownload'.",
        ),
        ("data.csv", "application/x-dosexec", "A .csv file cannot have the content type"),
    ],
)
def test_page_and_api_refuse_the_same_uploads(client, admin_user, name, content_type, needle):
    client.force_login(admin_user)
    page = client.post(
        reverse("labeling:import"),
        {
            "project": "rules",
            "file": SimpleUploadedFile(name, GOOD, content_type=content_type),
            "pairing": "all",
        },
    )
    assert page.status_code == 422 and needle.replace("'", "&#x27;") in page.content.decode()
    api = APIClient()
    api.force_authenticate(admin_user)
    response = api.post(
        "/api/v1/prompts/import/",
        {"project": "rules", "file": SimpleUploadedFile(name, GOOD, content_type=content_type)},
        format="multipart",
    )
    assert response.status_code == 400 and needle in response.json()["file"][0], response.content
    assert not Prompt.objects.exists() and not ImportJob.objects.exists()


def test_the_size_limit_is_the_same_for_page_api_and_cli(client, admin_user, settings, tmp_path):
    settings.LABELING_IMPORT_MAX_BYTES = 20
    needle = "the limit is 0.0 MB (LABELING_IMPORT_MAX_BYTES)"
    client.force_login(admin_user)
    page = client.post(
        reverse("labeling:import"),
        {"project": "big", "file": SimpleUploadedFile("a.jsonl", GOOD), "pairing": "all"},
    )
    assert page.status_code == 422 and needle in page.content.decode()
    api = APIClient()
    api.force_authenticate(admin_user)
    response = api.post(
        "/api/v1/prompts/import/",
        {"project": "big", "file": SimpleUploadedFile("a.jsonl", GOOD)},
        format="multipart",
    )
    assert response.status_code == 400 and needle in response.json()["file"][0]
    path = tmp_path / "a.jsonl"
    path.write_bytes(GOOD)
    with pytest.raises(CommandError, match=r"the limit is 0\.0 MB"):
        call_command("import_data", str(path), "--project", "big", "--no-progress")


def test_the_cli_refuses_what_the_page_refuses(tmp_path):
    exe = tmp_path / "tool.exe"
    exe.write_bytes(GOOD)
    with pytest.raises(CommandError, match=r"Upload a \.jsonl, \.ndjson or \.csv file, not 'tool\.exe'"):
        call_command("import_data", str(exe), "--project", "cli", "--no-progress")
    assert not Prompt.objects.exists()


def test_api_nan_priority_is_a_400_naming_line_and_field(admin_user):
    api = APIClient()
    api.force_authenticate(admin_user)
    record = {
        "prompt": "p",
        "priority": "nan",
        "responses": [{"content": "a", "source": "s"}, {"content": "b", "source": "s"}],
    }
    response = api.post("/api/v1/prompts/import/", {"project": "nan", "records": [record]}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == ["line 1, field 'priority': must be a finite number, not 'nan'"]
    assert json.loads(api.get("/api/v1/comparisons/").content)["results"] == []
