from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from core.roles import ALL_ROLES
from core.services import user_create_or_update


class Command(BaseCommand):
    help = "Create a user with a role (annotator, admin, researcher), or change an existing user's role/password."

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument("--role", required=True, choices=ALL_ROLES)
        parser.add_argument(
            "--password", help="Omit to create a user who cannot log in until a password is set."
        )
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--no-validate", action="store_true", help="Skip Django's password validators (demo accounts)."
        )

    def handle(self, *args, username, role, password, email, no_validate, **options):
        try:
            user, created = user_create_or_update(
                username=username, role=role, password=password, email=email, validate=not no_validate
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        verb = "Created" if created else "Updated"
        self.stdout.write(self.style.SUCCESS(f"{verb} user {user.username!r} with role {role}"))
