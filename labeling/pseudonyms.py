"""Annotator pseudonyms: what the API and the exports show instead of an annotator's id."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings


def annotator_pseudonym(annotator_id: int) -> str:
    """Stable per deployment (keyed with SECRET_KEY), not reversible without the key."""
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"labeling.annotator:{annotator_id}".encode(), hashlib.sha256
    ).hexdigest()
    return "a_" + digest[:16]
