import json
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from core.jobs import BrokerUnavailable
from labeling.models import Project
from training.management.commands.run_status import wait_for_run
from training.models import TrainingRun
from training.services.runs import PRESET_STAGES, training_run_launch


class Command(BaseCommand):
    help = "Launch a training round on the project's rankings (enqueued on the gpu queue); --wait shows progress."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project slug.")
        parser.add_argument("--preset", required=True, choices=list(PRESET_STAGES))
        parser.add_argument(
            "--peft",
            choices=["full", "lora", "adapter"],
            help="PEFT method of every stage (default: each stage config's peft.method, else full).",
        )
        parser.add_argument(
            "--config",
            help='Stage configs as JSON (or @file.json): {"sft": {"max_steps": 50}, "ppo": {"rules": [...]}}.',
        )
        parser.add_argument("--filters", help='Data filters as JSON, e.g. {"min_agreement": 0.5}.')
        parser.add_argument("--user", help="Username recorded as the run's creator.")
        parser.add_argument(
            "--sample-after",
            nargs="?",
            const="{}",
            metavar="JSON",
            help='Sample from the final policy when the run succeeds; optional options, e.g. {"limit": 100}.',
        )
        parser.add_argument(
            "--wait", action="store_true", help="Wait for the run to finish, with progress bars."
        )

    def handle(self, *args, project, preset, peft, config, filters, user, wait, sample_after, **options):
        project_obj = Project.objects.filter(slug=project).first()
        if project_obj is None:
            raise CommandError(f"No project with slug {project!r}.")
        created_by = None
        if user:
            created_by = get_user_model().objects.filter(username=user).first()
            if created_by is None:
                raise CommandError(f"No user {user!r}.")
        try:
            run = training_run_launch(
                project=project_obj,
                preset=preset,
                peft=peft,
                created_by=created_by,
                stage_configs=_json_argument(config, "--config"),
                filters=_json_argument(filters, "--filters"),
                sample_after=_json_argument(sample_after, "--sample-after", allow_empty=True),
            )
        except ValidationError as exc:
            lines = [f"  {field}: {'; '.join(messages)}" for field, messages in exc.message_dict.items()]
            raise CommandError("The round was not launched:\n" + "\n".join(lines)) from exc
        except BrokerUnavailable as exc:  # saved: it starts once the broker is back
            self.stderr.write(self.style.WARNING(str(exc)))
            run = TrainingRun.objects.get(pk=exc.pk)
        counts = ", ".join(f"{count} {fmt}" for fmt, count in run.dataset_counts.items())
        self.stdout.write(
            self.style.SUCCESS(f"Launched run #{run.pk} ({run.get_preset_display()}) on {counts} rows")
            + f"\n  dataset sha256 {run.dataset_hash}"
        )
        if wait:
            run = wait_for_run(run_id=run.pk, stdout=self.stdout)
            if run.status != TrainingRun.Status.SUCCEEDED:
                raise CommandError(f"Run #{run.pk} ended {run.status}: {run.error}")


def _json_argument(raw: str | None, name: str, allow_empty: bool = False) -> dict | None:
    if raw is None or (not raw and not allow_empty):
        return None
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CommandError(f"{name} must be a JSON object")
    return value
