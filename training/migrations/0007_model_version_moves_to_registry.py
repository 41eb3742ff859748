"""ModelVersion now lives in the registry app (registry 0001 took over its table): the runs' and stages' foreign
keys point there, and the training app forgets the model. Django's state only: no table or column changes."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0006_stagerun_output_model_one_to_one"),
        ("registry", "0001_initial"),
        # Every other foreign key to the model moved first, so none points at training.ModelVersion when it goes.
        ("labeling", "0006_response_model_version_in_registry"),
        ("loop", "0003_model_versions_in_registry"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="trainingrun",
                    name="base_model",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="training_runs",
                        to="registry.modelversion",
                    ),
                ),
                migrations.AlterField(
                    model_name="stagerun",
                    name="output_model",
                    field=models.OneToOneField(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="produced_by_stage",
                        to="registry.modelversion",
                    ),
                ),
                migrations.DeleteModel(name="ModelVersion"),
            ],
            database_operations=[],
        ),
    ]
