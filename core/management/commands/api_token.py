"""manage.py api_token USERNAME [--rotate]: print the user's REST API token (created when missing)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from core.services import api_token_for_username


class Command(BaseCommand):
    help = "Print a user's API token (Authorization: Token <key>); --rotate replaces it with a new one."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--rotate", action="store_true", help="Invalidate the old token, print a new one."
        )

    def handle(self, *args, username: str, rotate: bool, **options):
        try:
            token = api_token_for_username(username=username, rotate=rotate)
        except (ValidationError, PermissionDenied) as error:
            raise CommandError(" ".join(getattr(error, "messages", [str(error)]))) from None
        self.stdout.write(token.key)
