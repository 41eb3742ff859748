"""labeling 0006: exports and import jobs that said `done` say `succeeded` (the one job vocabulary), and back."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("labeling", "0005_assignment_live_lease_idx")]
AFTER = [("labeling", "0006_job_status_succeeded")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


def _statuses(apps) -> tuple[str, str]:
    export = apps.get_model("labeling", "Export").objects.get()
    job = apps.get_model("labeling", "ImportJob").objects.get()
    return export.status, job.status


@pytest.mark.django_db(transaction=True)
def test_done_becomes_succeeded_and_going_back_restores_done():
    try:
        apps = _migrate(BEFORE)
        project = apps.get_model("labeling", "Project").objects.create(
            slug="m", name="M", mode="pairwise", k=2
        )
        apps.get_model("labeling", "Export").objects.create(
            project=project, status="done", path="exports/m/x"
        )
        apps.get_model("labeling", "ImportJob").objects.create(
            project_slug="m", file_name="f.jsonl", status="done", finished_at=timezone.now()
        )
        assert _statuses(_migrate(AFTER)) == ("succeeded", "succeeded")
        assert _statuses(_migrate(BEFORE)) == ("done", "done")
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
