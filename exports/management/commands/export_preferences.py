"""manage.py export_preferences --project SLUG --format pairwise --out FILE.jsonl|FILE.parquet|DIR [filters]"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from exports.filters import AGGREGATIONS, PreferenceFilters
from exports.formats import FORMATS
from exports.selectors import export_estimate, preference_counts
from exports.writers import export_write, file_type_for_path
from labeling.models import Project


class Command(BaseCommand):
    help = (
        "Export a project's preferences (TRL-ready) to JSONL, Parquet (by suffix) or a Hugging Face datasets "
        "directory (any path without a suffix), with a dataset card beside it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project slug.")
        parser.add_argument("--format", choices=FORMATS, default="pairwise")
        parser.add_argument("--out", required=True, type=Path)
        parser.add_argument("--aggregation", choices=AGGREGATIONS, default="majority")
        parser.add_argument("--date-from", help="YYYY-MM-DD (inclusive) or ISO date-time.")
        parser.add_argument("--date-to", help="YYYY-MM-DD (inclusive) or ISO date-time (exclusive).")
        parser.add_argument("--min-agreement", type=float)
        parser.add_argument("--include-flagged", action="store_true", help="Keep flagged comparisons.")
        parser.add_argument("--gold-qualified-only", action="store_true")
        parser.add_argument("--adjudicated-only", action="store_true")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument(
            "--workers",
            type=int,
            help="Processes building a JSONL export on Postgres (default: LABELING_EXPORT_WORKERS for big exports; "
            "1 = one process). The file is the same either way.",
        )

    def handle(
        self, *args, project: str, format: str, out: Path, no_progress: bool, workers: int | None, **options
    ):
        found = Project.objects.filter(slug=project).first()
        if found is None:
            raise CommandError(f"No project {project!r}.")
        try:
            file_type = file_type_for_path(out)
            filters = PreferenceFilters(
                date_from=options["date_from"],
                date_to=options["date_to"],
                min_agreement=options["min_agreement"],
                exclude_flagged=not options["include_flagged"],
                gold_qualified_only=options["gold_qualified_only"],
                adjudicated_only=options["adjudicated_only"],
                aggregation=options["aggregation"],
            )
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        disable = no_progress or options.get("verbosity", 1) < 1
        counts = preference_counts(project=found, filters=filters)
        total = (
            None if disable else export_estimate(project=found, format=format, filters=filters, counts=counts)
        )
        with tqdm(
            total=total, desc=f"export {format}", unit="row", disable=disable, file=self.stderr._out
        ) as bar:

            def progress(rows: int) -> None:
                bar.update(rows - bar.n)

            result = export_write(
                project=found,
                format=format,
                file_type=file_type,
                dest=out,
                filters=filters,
                on_progress=progress,
                workers=workers,
            )
            # The total was an upper bound (filters drop rows while writing): the finished bar says 100%.
            bar.total = bar.n = result.rows
            bar.refresh()
        self.stdout.write(
            self.style.SUCCESS(
                f"Wrote {result.rows} rows to {result.path} ({file_type}, {result.size_bytes} bytes); "
                f"content hash {result.content_hash}"
            )
        )
