from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from labeling.models import Project
from loop.oracles import OracleError
from loop.services.simulation import annotators_simulate


class Command(BaseCommand):
    help = (
        "Rank a project's open comparisons with programmatic annotators (shorter, longer, keyword:<word>, "
        "arithmetic) through the same leasing and validation as people. For headless loops and demos."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--oracle", required=True, help="shorter | longer | keyword:<word> | arithmetic")
        parser.add_argument("--annotators", type=int, default=1)
        parser.add_argument(
            "--noise", type=float, default=0.0, help="Probability of a random ranking instead."
        )
        parser.add_argument("--max-items", type=int, help="Per annotator.")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, project, oracle, annotators, noise, max_items, seed, **options):
        project_obj = Project.objects.filter(slug=project).first()
        if project_obj is None:
            raise CommandError(f"No project with slug {project!r}.")
        try:
            report = annotators_simulate(
                project=project_obj,
                oracle=oracle,
                annotators=annotators,
                noise=noise,
                max_items=max_items,
                seed=seed,
            )
        except (OracleError, ValueError, ValidationError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"{report.annotators} simulated annotator(s) submitted {report.rankings} rankings."
            )
        )
