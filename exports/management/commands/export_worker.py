"""Internal: one worker process of a parallel export (started by `exports.parallel`)."""

import json
import sys

from django.core.management.base import BaseCommand

from exports.parallel import run_worker


class Command(BaseCommand):
    help = "Internal: export the key ranges of a parallel export job read as JSON from stdin."
    # No checks: they would query the database before the worker points it at the parent's.
    requires_system_checks: list[str] = []

    def handle(self, *args, **options) -> None:
        job = json.loads(sys.stdin.read())
        # The protocol owns stdout; anything else printed goes to stderr (the worker's log).
        out, sys.stdout = sys.stdout, sys.stderr
        run_worker(job, out)
