"""manage.py seed_demo: the demo users (one per role, core) and the demo project (labeling)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.roles import Role
from core.services import user_create_or_update
from labeling.services.seed import demo_project_seed

# Local demo accounts only: the command refuses to run with DEBUG=0 unless forced.
DEMO_USERS: tuple[tuple[str, Role, str], ...] = (
    ("admin", Role.ADMIN, "admin-demo"),
    ("annotator", Role.ANNOTATOR, "annotate-demo"),
    ("annotator2", Role.ANNOTATOR, "annotate-demo"),
    ("researcher", Role.RESEARCHER, "research-demo"),
)


class Command(BaseCommand):
    help = "Create the demo users (one per role) and the demo project with prompts and responses. Idempotent."

    def add_arguments(self, parser):
        parser.add_argument(
            "--force", action="store_true", help="Seed even with DEBUG=0 (never in production)."
        )

    def handle(self, *args, force: bool, **options):
        if not settings.DEBUG and not force:
            raise CommandError("seed_demo creates accounts with known passwords; it runs only with DEBUG=1.")
        for username, role, password in DEMO_USERS:
            user_create_or_update(username=username, role=role, password=password, validate=False)
        report = demo_project_seed(slug="demo")
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo project {report.project.slug!r} is ready: {report.prompts} prompts, {report.responses} "
                f"responses, {report.comparisons} comparisons ({report.gold} gold)."
            )
        )
        self.stdout.write("\nDemo users (local only):")
        self.stdout.write(f"  {'username':<12} {'role':<11} password")
        for username, role, password in DEMO_USERS:
            self.stdout.write(f"  {username:<12} {role.value:<11} {password}")
        self.stdout.write("")
