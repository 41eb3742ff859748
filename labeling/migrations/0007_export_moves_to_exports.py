"""Export now belongs to the exports app (exports 0001): dropped from labeling's state only; its table
`labeling_export` and its rows stay."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("labeling", "0006_job_status_succeeded"),
        ("exports", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="Export")]),
    ]
