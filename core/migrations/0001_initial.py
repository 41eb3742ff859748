from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list = []

    operations = [
        migrations.CreateModel(
            name="WorkerHeartbeat",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("hostname", models.CharField(max_length=255, unique=True)),
                ("queue", models.CharField(max_length=64)),
                ("device", models.CharField(blank=True, max_length=128)),
                ("last_seen", models.DateTimeField()),
            ],
            options={"ordering": ["-last_seen"]},
        ),
    ]
