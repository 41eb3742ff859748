"""Which stage produced a model version is recorded once, on the stage (`StageRun.output_model`, now one-to-one):
`ModelVersion.stage_run` pointed the other way and held the same fact. Dropping it lets the model registry move to
its own app without pointing back at training. Every `stage_run` is kept as its stage's `output_model` first."""

import django.db.models.deletion
from django.db import migrations, models


def stage_run_to_output_model(apps, schema_editor):
    ModelVersion = apps.get_model("training", "ModelVersion")
    StageRun = apps.get_model("training", "StageRun")
    for version_id, stage_id in ModelVersion.objects.exclude(stage_run=None).values_list(
        "id", "stage_run_id"
    ):
        # A stage that names another version already keeps it: that is the one its run page links to.
        StageRun.objects.filter(pk=stage_id, output_model=None).update(output_model_id=version_id)
    _check_foreign_keys_now(schema_editor)


def output_model_to_stage_run(apps, schema_editor):
    ModelVersion = apps.get_model("training", "ModelVersion")
    StageRun = apps.get_model("training", "StageRun")
    for stage_id, version_id in StageRun.objects.exclude(output_model=None).values_list(
        "id", "output_model_id"
    ):
        ModelVersion.objects.filter(pk=version_id).update(stage_run_id=stage_id)
    _check_foreign_keys_now(schema_editor)


def _check_foreign_keys_now(schema_editor):
    """Postgres defers foreign key checks to the commit, and refuses to ALTER a table with checks pending (the
    next operations do, in the same transaction): run them now."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0005_stagerun_phase"),
    ]

    operations = [
        migrations.RunPython(stage_run_to_output_model, output_model_to_stage_run, elidable=False),
        migrations.RemoveField(model_name="modelversion", name="stage_run"),
        migrations.AlterField(
            model_name="stagerun",
            name="output_model",
            field=models.OneToOneField(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="produced_by_stage",
                to="training.modelversion",
            ),
        ),
    ]
