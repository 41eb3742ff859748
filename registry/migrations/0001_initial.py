"""ModelVersion moves here from the training app. Its table keeps its name (`training_modelversion`) and its rows:
this migration changes Django's state only, and moves the model's content type (and so its permissions and admin
history) to the new app label."""

import django.db.models.deletion
from django.db import migrations, models


def content_type_to_registry(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="registry", model="modelversion").exists():
        ContentType.objects.filter(app_label="training", model="modelversion").update(app_label="registry")


def content_type_to_training(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="training", model="modelversion").exists():
        ContentType.objects.filter(app_label="registry", model="modelversion").update(app_label="training")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        # The table as it is once `stage_run` is gone (training 0006); training 0007 then drops the model there.
        ("training", "0006_stagerun_output_model_one_to_one"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ModelVersion",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("name", models.CharField(max_length=200, unique=True)),
                        (
                            "kind",
                            models.CharField(
                                choices=[
                                    ("policy", "Policy"),
                                    ("reward", "Reward model"),
                                    ("adapter", "Adapter"),
                                ],
                                default="policy",
                                max_length=16,
                            ),
                        ),
                        (
                            "artifact_path",
                            models.CharField(help_text="Relative to ARTIFACT_ROOT.", max_length=500),
                        ),
                        ("sha256", models.CharField(max_length=64)),
                        (
                            "source",
                            models.CharField(
                                blank=True, help_text="Where the weights came from.", max_length=300
                            ),
                        ),
                        ("config", models.JSONField(blank=True, default=dict)),
                        ("metrics", models.JSONField(blank=True, default=dict)),
                        ("num_parameters", models.BigIntegerField(default=0)),
                        (
                            "dataset_hash",
                            models.CharField(
                                blank=True, help_text="Content hash of the training data.", max_length=64
                            ),
                        ),
                        (
                            "use_for_sampling",
                            models.BooleanField(
                                default=False,
                                help_text="The policy whose responses feed the annotators (one at a time).",
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "base",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="derived",
                                to="registry.modelversion",
                            ),
                        ),
                        (
                            "parent",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="children",
                                to="registry.modelversion",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "training_modelversion",
                        "ordering": ["id"],
                        "constraints": [
                            models.UniqueConstraint(
                                condition=models.Q(("use_for_sampling", True)),
                                fields=("use_for_sampling",),
                                name="one_sampling_policy",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(
                                    ("use_for_sampling", False), ("kind", "policy"), _connector="OR"
                                ),
                                name="sampling_model_is_policy",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("sha256__regex", "^[0-9a-f]{64}$")),
                                name="modelversion_sha256_hex",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(("artifact_path", ""), _negated=True),
                                name="modelversion_artifact_path_set",
                            ),
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_type_to_registry, content_type_to_training),
    ]
