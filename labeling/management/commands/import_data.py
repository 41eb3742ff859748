"""manage.py import_data FILE --project SLUG [--format jsonl|csv] [--build-k K --pairing all|disjoint]"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from labeling.models import MAX_K, MIN_K
from labeling.services.import_jobs import import_upload_check
from labeling.services.import_parsing import ImportRejected, import_plan
from labeling.services.imports import import_apply
from labeling.services.projects import PAIRINGS


class Command(BaseCommand):
    help = "Import prompts, responses or full comparisons (JSONL or CSV) into a project; nothing on any bad line."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--project", required=True, help="Project slug (created when missing).")
        parser.add_argument(
            "--format",
            choices=["jsonl", "csv"],
            help="Default: from the file extension (.jsonl, .ndjson, .csv).",
        )
        parser.add_argument(
            "--build-k", type=int, help=f"Also build comparisons of K ({MIN_K}-{MAX_K}) responses."
        )
        parser.add_argument("--pairing", choices=PAIRINGS, default="all")
        parser.add_argument("--no-progress", action="store_true")

    def handle(
        self, *args, file: Path, project: str, format: str | None, build_k, pairing, no_progress, **options
    ):
        if not file.is_file():
            raise CommandError(f"{file} is not a file")
        try:  # the upload page's and the API's rules: extension and size
            detected = import_upload_check(name=file.name, size=file.stat().st_size)
        except ValidationError as error:
            raise CommandError(" ".join(error.message_dict["file"])) from None
        fmt = format or detected
        data = file.read_bytes()
        lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        disable = no_progress or options.get("verbosity", 1) < 1
        try:
            with tqdm(
                total=lines, desc="validate", unit="line", disable=disable, file=self.stderr._out
            ) as bar:
                plan = import_plan(data=data, fmt=fmt, progress=bar.update)
            with tqdm(
                total=plan.rows, desc="import", unit="row", disable=disable, file=self.stderr._out
            ) as bar:
                report = import_apply(
                    project_slug=project, plan=plan, build_k=build_k, pairing=pairing, progress=bar.update
                )
        except ImportRejected as rejected:
            raise CommandError("Nothing imported:\n  " + "\n  ".join(rejected.messages)) from None
        self.stdout.write(self.style.SUCCESS(f"Imported into {project}: {report.summary()}"))
