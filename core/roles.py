"""The three roles of the platform, as Django groups (created by a data migration)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ANNOTATOR = "annotator"  # ranks comparisons
    ADMIN = "admin"  # imports data, launches and watches training rounds, adjudicates
    RESEARCHER = "researcher"  # reads runs and model versions, exports datasets


ALL_ROLES: tuple[str, ...] = tuple(role.value for role in Role)
