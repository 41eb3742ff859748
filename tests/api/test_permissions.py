"""Permission matrix: every endpoint × anonymous / annotator / researcher / admin."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from exports.models import Export
from exports.services import export_create, export_run
from labeling.models import Ranking
from labeling.services.leasing import assignment_lease_next
from labeling.services.rankings import ranking_submit
from loop.services.sampling import sampling_job_create
from registry.models import BaseModelImport, ModelVersion
from tests.labeling.factories import PASSWORD, make_comparison, make_project, make_user
from training.models import StageRun, TrainingRun

pytestmark = pytest.mark.django_db

# expected status per role: (anonymous, annotator, researcher, admin)
ROLES = ("anonymous", "annotator", "researcher", "admin")
READ_ANY = (401, 200, 200, 200)
READ_RESEARCH = (401, 403, 200, 200)
ADMIN_ONLY = (401, 403, 403, 200)


@pytest.fixture
def world(users, tmp_path):
    project = make_project("perm", overlap=3)
    comparisons = [make_comparison(project) for _ in range(6)]
    other = make_user("api-other")
    lease = assignment_lease_next(project=project, annotator=other)
    foreign = ranking_submit(assignment_id=lease.pk, annotator=other, choice="a")
    version = ModelVersion.objects.create(name="base", artifact_path="models/base", sha256="0" * 64)
    run = TrainingRun.objects.create(project=project, preset="sft", base_model=version)
    # Failed stages to resume and to retry (on-commit hooks never run here: nothing is enqueued).
    failed = []
    for _ in range(2):
        stopped = TrainingRun.objects.create(
            project=project, preset="sft", base_model=version, status=TrainingRun.Status.FAILED
        )
        failed.append(
            StageRun.objects.create(
                run=stopped, position=0, kind="sft", status=StageRun.Status.FAILED, config={}, total_steps=3
            )
        )
    export = export_create(
        project=project, format="pairwise", file_type="jsonl", created_by=users["researcher"], enqueue=False
    )
    export_run(export_id=export.pk)
    hf = export_create(
        project=project, format="raw", file_type="hf", created_by=users["admin"], enqueue=False
    )
    export_run(export_id=hf.pk)
    failed_export = export_create(
        project=project, format="pairwise", file_type="jsonl", created_by=users["admin"], enqueue=False
    )
    Export.objects.filter(pk=failed_export.pk).update(status=Export.Status.FAILED, error="disk full")
    # Never sent: on-commit hooks do not run in these tests.
    sampling_job = sampling_job_create(project=project, model_version=version, created_by=users["admin"])
    # A folder on the shared volume to import (the worker checks that it is a model; creating the job does not).
    model_folder = Path(settings.ARTIFACT_ROOT) / "incoming" / "my-model"
    model_folder.mkdir(parents=True)
    model_import = BaseModelImport.objects.create(source_path=str(model_folder))
    return {
        "project": project,
        "prompt": comparisons[0].prompt,
        "response": comparisons[0].items.first().response,
        "comparison": comparisons[0],
        "foreign_ranking": foreign,
        "version": version,
        "run": run,
        "resumable": failed[0],
        "retryable": failed[1],
        "export": export,
        "hf_export": hf,
        "failed_export": failed_export,
        "sampling_job": sampling_job,
        "model_folder": model_folder,
        "model_import": model_import,
    }


def _lease(user, project):
    assignment = assignment_lease_next(project=project, annotator=user)
    return assignment.pk if assignment else 0


def _matrix(world, users):
    """(name, method, url or callable(role) -> url, payload or callable(role) -> payload, expected statuses)."""
    p, w = world["project"], world
    return [
        ("api root", "get", "/api/v1/", None, READ_ANY),
        ("projects list", "get", "/api/v1/projects/", None, READ_ANY),
        ("project detail", "get", f"/api/v1/projects/{p.slug}/", None, READ_ANY),
        (
            "project create",
            "post",
            "/api/v1/projects/",
            lambda role: {"slug": f"new-{role}", "name": "New", "mode": "pairwise", "k": 2},
            (401, 403, 403, 201),
        ),
        ("prompts list", "get", "/api/v1/prompts/", None, READ_RESEARCH),
        ("prompt detail", "get", f"/api/v1/prompts/{w['prompt'].pk}/", None, READ_RESEARCH),
        (
            "prompts import",
            "post",
            "/api/v1/prompts/import/",
            lambda role: {"project": "imported", "records": [{"prompt": f"Hello from {role}?"}]},
            (401, 403, 403, 201),
        ),
        ("responses list", "get", "/api/v1/responses/", None, READ_RESEARCH),
        ("response detail", "get", f"/api/v1/responses/{w['response'].pk}/", None, READ_RESEARCH),
        ("comparisons list", "get", "/api/v1/comparisons/", None, READ_RESEARCH),
        ("comparison detail", "get", f"/api/v1/comparisons/{w['comparison'].pk}/", None, READ_RESEARCH),
        ("rankings list", "get", "/api/v1/rankings/", None, READ_ANY),
        # Annotators only see their own rankings: someone else's is not found.
        ("ranking detail", "get", f"/api/v1/rankings/{w['foreign_ranking'].pk}/", None, (401, 404, 200, 200)),
        ("rankings next", "post", "/api/v1/rankings/next/", {"project": p.slug}, (401, 200, 403, 200)),
        (
            "rankings submit",
            "post",
            "/api/v1/rankings/submit/",
            lambda role: {"assignment": _lease(users[role], p) if role in users else 0, "choice": "b"},
            (401, 201, 403, 201),
        ),
        (
            "rankings skip",
            "post",
            "/api/v1/rankings/skip/",
            lambda role: {"assignment": _lease(users[role], p) if role in users else 0, "reason": "unsure"},
            (401, 204, 403, 204),
        ),
        ("model versions list", "get", "/api/v1/model-versions/", None, READ_RESEARCH),
        ("model version detail", "get", f"/api/v1/model-versions/{w['version'].pk}/", None, READ_RESEARCH),
        ("model imports list", "get", "/api/v1/model-imports/", None, ADMIN_ONLY),
        ("model import detail", "get", f"/api/v1/model-imports/{w['model_import'].pk}/", None, ADMIN_ONLY),
        (
            "model import create",
            "post",
            "/api/v1/model-imports/",
            {"path": str(w["model_folder"]), "name": "Ours"},
            (401, 403, 403, 202),
        ),
        ("training runs list", "get", "/api/v1/training-runs/", None, READ_RESEARCH),
        ("training run detail", "get", f"/api/v1/training-runs/{w['run'].pk}/", None, READ_RESEARCH),
        (
            "training run launch",
            "post",
            "/api/v1/training-runs/",
            {"project": p.slug, "preset": "sft", "base_model": w["version"].pk},
            (401, 403, 403, 201),
        ),
        ("training run cancel", "post", f"/api/v1/training-runs/{w['run'].pk}/cancel/", None, ADMIN_ONLY),
        (
            "training stage resume",
            "post",
            f"/api/v1/training-runs/{w['resumable'].run_id}/stages/{w['resumable'].pk}/resume/",
            None,
            ADMIN_ONLY,
        ),
        (
            "training stage retry",
            "post",
            f"/api/v1/training-runs/{w['retryable'].run_id}/stages/{w['retryable'].pk}/retry/",
            None,
            ADMIN_ONLY,
        ),
        ("exports list", "get", "/api/v1/exports/", None, READ_RESEARCH),
        ("export detail", "get", f"/api/v1/exports/{w['export'].pk}/", None, READ_RESEARCH),
        (
            "export create",
            "post",
            "/api/v1/exports/",
            {"project": p.slug, "format": "kto", "file_type": "parquet", "filters": {"aggregation": "all"}},
            (401, 403, 202, 202),
        ),
        ("export download", "get", f"/api/v1/exports/{w['export'].pk}/download/", None, READ_RESEARCH),
        # A done export can be neither cancelled nor retried (400); a failed one is retried (202, then queued).
        ("export cancel", "post", f"/api/v1/exports/{w['export'].pk}/cancel/", None, (401, 403, 400, 400)),
        (
            "export retry",
            "post",
            f"/api/v1/exports/{w['failed_export'].pk}/retry/",
            None,
            (401, 403, 202, 202),
        ),
        ("export download hf", "get", f"/api/v1/exports/{w['hf_export'].pk}/download/", None, READ_RESEARCH),
        # The loop's pages: sampling is for admins, the leaderboard for researchers and admins.
        ("sampling jobs list", "get", "/api/v1/sampling-jobs/", None, ADMIN_ONLY),
        ("sampling job detail", "get", f"/api/v1/sampling-jobs/{w['sampling_job'].pk}/", None, ADMIN_ONLY),
        (
            "sampling job create",
            "post",
            "/api/v1/sampling-jobs/",
            {"project": p.slug, "model_version": w["version"].pk, "limit": 2},
            (401, 403, 403, 201),
        ),
        ("leaderboard", "get", f"/api/v1/leaderboard/{p.slug}/", None, READ_RESEARCH),
        (
            "token",
            "post",
            "/api/v1/auth/token/",
            lambda role: {"username": users[role].username, "password": PASSWORD} if role in users else {},
            (400, 200, 200, 200),
        ),
        ("schema", "get", "/api/schema/", None, (200, 200, 200, 200)),
        ("docs", "get", "/api/docs/", None, (200, 200, 200, 200)),
    ]


def test_permission_matrix(world, users, clients):
    failures = []
    checked = 0
    for name, method, url, payload, expected in _matrix(world, users):
        for role, want in zip(ROLES, expected, strict=True):
            data = payload(role) if callable(payload) else payload
            response = getattr(clients[role], method)(
                url, data=data, format="json" if data is not None else None
            )
            checked += 1
            if response.status_code != want:
                failures.append(f"{name} as {role}: {response.status_code} (want {want})")
            if role == "anonymous" and want == 401:
                assert response["WWW-Authenticate"] == "Token"
    assert not failures, "\n".join(failures)
    assert checked == len(_matrix(world, users)) * 4


def test_visibility_and_payloads(world, users, clients):
    mine = clients["annotator"].get("/api/v1/rankings/").json()
    assert mine["count"] == 0  # the annotator has ranked nothing yet; the foreign ranking is hidden
    everything = clients["researcher"].get("/api/v1/rankings/?project=perm").json()
    assert everything["count"] == Ranking.objects.count() == 1
    assert everything["results"][0]["annotator"].startswith("a_")  # pseudonymised, never the user id
    lease = clients["annotator"].post("/api/v1/rankings/next/", {"project": "perm"}, format="json").json()
    assert [r["letter"] for r in lease["responses"]] == ["A", "B"]
    assert lease["prompt"][0]["role"] == "user"
    export = clients["researcher"].get(f"/api/v1/exports/{world['export'].pk}/").json()
    assert export["status"] == "succeeded" and export["download_url"].endswith("/download/")
    download = clients["researcher"].get(export["download_url"])
    body = b"".join(download.streaming_content)
    assert body.count(b"\n") == export["rows"]
    tar = clients["admin"].get(f"/api/v1/exports/{world['hf_export'].pk}/download/")
    assert tar["Content-Type"] == "application/x-tar"
    import io
    import tarfile

    names = tarfile.open(fileobj=io.BytesIO(b"".join(tar.streaming_content))).getnames()
    # One folder, as `export_preferences` writes it: the dataset's files and its card (load_from_disk opens it).
    hf = world["hf_export"]
    folder = f"{hf.project.slug}-{hf.format}-{hf.pk}"
    assert f"{folder}/dataset_info.json" in names and f"{folder}/README.md" in names
    # Session authentication works too (the browser's).
    from rest_framework.test import APIClient

    browser = APIClient()
    browser.force_login(users["researcher"])
    assert browser.get("/api/v1/model-versions/").status_code == 200
    # Filtering and pagination.
    page = clients["admin"].get("/api/v1/comparisons/?project=perm&page_size=2").json()
    assert page["count"] == 6 and len(page["results"]) == 2 and page["next"]
    world["export"].refresh_from_db()
    assert Path(world["export"].path).name == "pairwise.jsonl"
