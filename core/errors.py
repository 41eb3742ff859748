"""Errors the domain apps raise that the layers above (API, pages, commands) answer in one way."""

from __future__ import annotations

from django.core.exceptions import ValidationError


class RejectedInput(ValidationError):
    """Input refused as a whole with a list of messages tied to no single field (e.g. every bad line of an import
    file); the API answers it as {"errors": [messages]}."""
