"""Exports and import jobs take the one job status vocabulary (core.models.JobStatus): `done` becomes
`succeeded`, as runs, stages and sampling jobs say. Reversible: going back turns `succeeded` into `done` again."""

from django.db import migrations, models

JOB_STATUSES = [
    ("queued", "Queued"),
    ("running", "Running"),
    ("succeeded", "Succeeded"),
    ("failed", "Failed"),
    ("cancelled", "Cancelled"),
]


def _rename_status(apps, old: str, new: str) -> None:
    for model in ("Export", "ImportJob"):
        apps.get_model("labeling", model).objects.filter(status=old).update(status=new)


def done_to_succeeded(apps, schema_editor):
    _rename_status(apps, "done", "succeeded")


def succeeded_to_done(apps, schema_editor):
    _rename_status(apps, "succeeded", "done")


class Migration(migrations.Migration):
    dependencies = [
        ("labeling", "0005_assignment_live_lease_idx"),
    ]

    operations = [
        # The constraint names the status value: dropped before the rows change, made again after (both ways).
        migrations.RemoveConstraint(
            model_name="export",
            name="export_done_has_path",
        ),
        migrations.AlterField(
            model_name="export",
            name="status",
            field=models.CharField(choices=JOB_STATUSES, default="queued", max_length=16),
        ),
        migrations.AlterField(
            model_name="importjob",
            name="status",
            field=models.CharField(choices=JOB_STATUSES, default="queued", max_length=16),
        ),
        migrations.RunPython(done_to_succeeded, succeeded_to_done),
        migrations.AddConstraint(
            model_name="export",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("status", "succeeded"), _negated=True),
                    models.Q(("path", ""), _negated=True),
                    _connector="OR",
                ),
                name="export_succeeded_has_path",
            ),
        ),
    ]
