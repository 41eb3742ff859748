"""Export moves here from the labeling app: the state only, its table `labeling_export` and its rows stay as they
are (labeling 0007 drops it from labeling's state). Its content type follows it, with the permissions that point
at it."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _move_content_type(apps, old_app: str, new_app: str) -> None:
    content_types = apps.get_model("contenttypes", "ContentType").objects
    if not content_types.filter(app_label=new_app, model="export").exists():
        content_types.filter(app_label=old_app, model="export").update(app_label=new_app)


def _content_type_to_exports(apps, schema_editor):
    _move_content_type(apps, "labeling", "exports")


def _content_type_to_labeling(apps, schema_editor):
    _move_content_type(apps, "exports", "labeling")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("labeling", "0006_job_status_succeeded"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Export",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "status",
                            models.CharField(
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
                        ("error", models.TextField(blank=True)),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("finished_at", models.DateTimeField(blank=True, null=True)),
                        ("celery_task_id", models.CharField(blank=True, max_length=255)),
                        (
                            "enqueued_at",
                            models.DateTimeField(
                                blank=True,
                                help_text="When its task was last published; empty: not yet (core.jobs sends it).",
                                null=True,
                            ),
                        ),
                        (
                            "format",
                            models.CharField(
                                choices=[
                                    ("pairwise", "Pairwise preferences (prompt / chosen / rejected)"),
                                    ("ranking", "k-way rankings with ties"),
                                    ("sft", "Best responses as chat messages (SFT)"),
                                    ("kto", "Unpaired prompt / completion / label (KTO)"),
                                    ("raw", "Every ranking, pseudonymised"),
                                ],
                                default="pairwise",
                                max_length=16,
                            ),
                        ),
                        (
                            "file_type",
                            models.CharField(
                                choices=[
                                    ("jsonl", "JSON Lines"),
                                    ("parquet", "Parquet"),
                                    ("hf", "Hugging Face datasets directory (save_to_disk)"),
                                ],
                                default="jsonl",
                                max_length=16,
                            ),
                        ),
                        (
                            "filters",
                            models.JSONField(
                                blank=True, default=dict, help_text="PreferenceFilters.to_dict()."
                            ),
                        ),
                        ("rows", models.BigIntegerField(default=0)),
                        (
                            "progress",
                            models.FloatField(
                                default=0.0, help_text="0–1, an estimate until the export has finished."
                            ),
                        ),
                        (
                            "path",
                            models.CharField(
                                blank=True, help_text="Relative to ARTIFACT_ROOT.", max_length=500
                            ),
                        ),
                        ("size_bytes", models.BigIntegerField(default=0)),
                        ("content_hash", models.CharField(blank=True, max_length=64)),
                        (
                            "stats",
                            models.JSONField(
                                blank=True, default=dict, help_text="What the dataset card says."
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "created_by",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="exports",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "project",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="exports",
                                to="labeling.project",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "labeling_export",
                        "ordering": ["-id"],
                        "constraints": [
                            models.CheckConstraint(
                                condition=models.Q(("progress__gte", 0), ("progress__lte", 1)),
                                name="export_progress_range",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(
                                    models.Q(("status", "succeeded"), _negated=True),
                                    models.Q(("path", ""), _negated=True),
                                    _connector="OR",
                                ),
                                name="export_succeeded_has_path",
                            ),
                        ],
                    },
                )
            ]
        ),
        migrations.RunPython(_content_type_to_exports, _content_type_to_labeling),
    ]
