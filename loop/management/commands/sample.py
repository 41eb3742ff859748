import json
import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from core.jobs import BrokerUnavailable
from core.progress import ProgressLine
from labeling.models import Project
from loop.models import SamplingJob
from loop.services.sampling import sampling_job_create
from loop.services.sampling_execution import sampling_job_execute
from registry.models import ModelVersion


class Command(BaseCommand):
    help = "Generate responses from a model version for a project's prompts and queue new comparisons."

    def add_arguments(self, parser):
        parser.add_argument("--model-version", type=int, required=True)
        parser.add_argument("--project", required=True)
        parser.add_argument("--pool", default="new", choices=SamplingJob.Pool.values)
        parser.add_argument("--limit", type=int)
        parser.add_argument("--params", help='Generation parameters as JSON, e.g. {"max_new_tokens": 64}.')
        parser.add_argument("--uncertain-share", type=float, default=0.5)
        parser.add_argument("--no-comparisons", action="store_true")
        parser.add_argument("--here", action="store_true", help="Run in this process instead of on a worker.")
        parser.add_argument(
            "--wait",
            action="store_true",
            help="Wait for the worker: a progress bar on a terminal, a line per change otherwise.",
        )

    def handle(self, *args, **opts):
        project = Project.objects.filter(slug=opts["project"]).first()
        version = ModelVersion.objects.filter(pk=opts["model_version"]).first()
        if project is None or version is None:
            raise CommandError("Unknown project or model version.")
        try:
            params = json.loads(opts["params"]) if opts["params"] else None
            job = sampling_job_create(
                project=project,
                model_version=version,
                pool=opts["pool"],
                limit=opts["limit"],
                params=params,
                make_comparisons=not opts["no_comparisons"],
                uncertain_share=opts["uncertain_share"],
                enqueue=not opts["here"],
            )
        except (ValidationError, json.JSONDecodeError) as exc:
            raise CommandError(str(exc)) from exc
        except BrokerUnavailable as exc:  # saved: it starts once the broker is back
            self.stderr.write(self.style.WARNING(str(exc)))
            job = SamplingJob.objects.get(pk=exc.pk)
        if opts["here"]:
            sampling_job_execute(job_id=job.pk)
        elif opts["wait"]:
            line = ProgressLine(self.stdout, desc=f"sampling job #{job.pk}")
            try:
                while True:
                    job.refresh_from_db()
                    line.show(job.done, job.total, job.status)
                    if job.status in (SamplingJob.Status.SUCCEEDED, SamplingJob.Status.FAILED):
                        break
                    time.sleep(1)
            finally:
                line.close()
        job.refresh_from_db()
        if job.status == SamplingJob.Status.FAILED:
            raise CommandError(f"Sampling job #{job.pk} failed: {job.error}")
        self.stdout.write(
            self.style.SUCCESS(
                f"Sampling job #{job.pk} {job.status}: {job.responses_created} responses, "
                f"{job.comparisons_created} new comparisons"
            )
        )
