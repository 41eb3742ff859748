"""Sampling jobs take the one job status vocabulary (core.models.JobStatus); no stored value changes."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("loop", "0002_job_enqueued_at"),
    ]

    operations = [
        migrations.AlterField(
            model_name="samplingjob",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("running", "Running"),
                    ("succeeded", "Succeeded"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                ],
                default="queued",
                max_length=16,
            ),
        ),
    ]
