"""SamplingJob's model versions are registry.ModelVersion (the same table: Django's state only)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("loop", "0002_job_enqueued_at"),
        ("registry", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="samplingjob",
                    name="model_version",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="sampling_jobs",
                        to="registry.modelversion",
                    ),
                ),
                migrations.AlterField(
                    model_name="samplingjob",
                    name="reward_model",
                    field=models.ForeignKey(
                        blank=True,
                        help_text="Scores candidate pairs for active selection; the newest reward model when empty.",
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="registry.modelversion",
                    ),
                ),
            ],
            database_operations=[],
        ),
    ]
