"""RunPython for SQL that only Postgres runs (the hot path's functions; SQLite keeps the Python paths). The leading
underscore keeps Django's migration loader from taking this module for a migration."""

from django.db import migrations


def postgres_only(create: str, drop: str) -> migrations.RunPython:
    def forwards(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(create)

    def backwards(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(drop)

    return migrations.RunPython(forwards, backwards)
