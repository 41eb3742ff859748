"""Which judgements an export or a training snapshot takes from a project: `PreferenceFilters` (stored as JSON with
`to_dict` / `from_dict`), and the querysets that select them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, time, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from labeling.models import Adjudication, Comparison, Project, Ranking

AGGREGATIONS: tuple[str, ...] = ("majority", "all")
# A vote that flags its item (unsafe, broken, off-topic) or calls both responses bad.
FLAGGED = ~Q(flags=[]) | Q(both_bad=True)


def _parse_when(value: Any, name: str) -> date | datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime | date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValidationError({name: f"{value!r} is not an ISO date (YYYY-MM-DD) or date-time."})


def _bound(value: date | datetime | None, *, end: bool) -> datetime | None:
    """A datetime bound: a date means the whole day (inclusive at both ends), a naive datetime is in TIME_ZONE."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if timezone.is_aware(value) else timezone.make_aware(value)
    day = value + timedelta(days=1) if end else value
    return timezone.make_aware(datetime.combine(day, time.min))


@dataclass(frozen=True)
class PreferenceFilters:
    """Which judgements an export or a training snapshot takes from a project.

    - `date_from` / `date_to`: when a vote was submitted (an adjudication: last changed). A `date` covers the whole
      day at both ends (local TIME_ZONE); a `datetime` is an exact bound, inclusive from, exclusive to.
    - `min_agreement` (0–1): keep comparisons whose pairwise percent agreement among the kept votes is at least
      this; comparisons with fewer than two kept votes have no agreement and are dropped. Adjudicated comparisons
      always pass (the adjudication settled the disagreement).
    - `exclude_flagged`: drop comparisons that any annotator flagged (unsafe, broken, off-topic) or marked "both
      bad" — the item itself is suspect, so this looks at every vote, not only the kept ones.
    - `gold_qualified_only`: keep only votes of annotators whose gold trust reaches the project's threshold.
    - `adjudicated_only`: keep only comparisons with an adjudication.
    - `aggregation`: "majority" (one consensus per comparison) or "all" (every vote).
    """

    date_from: date | datetime | None = None
    date_to: date | datetime | None = None
    min_agreement: float | None = None
    exclude_flagged: bool = True
    gold_qualified_only: bool = False
    adjudicated_only: bool = False
    aggregation: str = "majority"

    def __post_init__(self) -> None:
        object.__setattr__(self, "date_from", _parse_when(self.date_from, "date_from"))
        object.__setattr__(self, "date_to", _parse_when(self.date_to, "date_to"))
        errors: dict[str, str] = {}
        if self.min_agreement is not None:
            try:
                value = float(self.min_agreement)
            except (TypeError, ValueError):
                value = -1.0
            if isinstance(self.min_agreement, bool) or not 0.0 <= value <= 1.0:
                errors["min_agreement"] = "Minimum agreement is a number from 0 to 1."
            else:
                object.__setattr__(self, "min_agreement", value)
        if self.aggregation not in AGGREGATIONS:
            errors["aggregation"] = f"Aggregation is one of {', '.join(AGGREGATIONS)}."
        for name in ("exclude_flagged", "gold_qualified_only", "adjudicated_only"):
            if not isinstance(getattr(self, name), bool):
                errors[name] = "Must be true or false."
        start, stop = _bound(self.date_from, end=False), _bound(self.date_to, end=True)
        if start is not None and stop is not None and start >= stop:
            errors["date_to"] = "The end date is before the start date."
        if errors:
            raise ValidationError(errors)

    @property
    def start(self) -> datetime | None:
        return _bound(self.date_from, end=False)

    @property
    def stop(self) -> datetime | None:
        return _bound(self.date_to, end=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (dates as ISO strings); `from_dict(to_dict())` gives an equal object."""
        data = asdict(self)
        for name in ("date_from", "date_to"):
            if data[name] is not None:
                data[name] = data[name].isoformat()
        return data

    def sentence(self) -> str:
        """What these filters keep, in words a reader of a run or an export page uses."""
        parts = [
            "every vote" if self.aggregation == "all" else "the majority ranking of each comparison",
            "adjudicated comparisons only" if self.adjudicated_only else "",
            "votes of gold-qualified annotators only" if self.gold_qualified_only else "",
            f"agreement at least {self.min_agreement:.0%}" if self.min_agreement is not None else "",
            "flagged and both-bad items left out" if self.exclude_flagged else "flagged items kept",
        ]
        if self.date_from and self.date_to:
            parts.append(f"submitted from {self.date_from.isoformat()} to {self.date_to.isoformat()}")
        elif self.date_from:
            parts.append(f"submitted from {self.date_from.isoformat()} on")
        elif self.date_to:
            parts.append(f"submitted until {self.date_to.isoformat()}")
        text = ", ".join(part for part in parts if part)
        return text[0].upper() + text[1:] + "."

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PreferenceFilters:
        """Build from stored JSON or a request; unknown keys are an error, missing keys take the defaults."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError({unknown[0]: "Unknown filter."})
        return cls(**data)


def comparison_queryset(
    *, project: Project, filters: PreferenceFilters, include_gold: bool, flagged_in_sql: bool = True
) -> QuerySet:
    """The project's comparisons after the comparison filters. `flagged_in_sql=False` leaves `exclude_flagged` to
    the caller (the row iterator sees every vote of a chunk anyway: a per-comparison NOT EXISTS costs more)."""
    queryset = Comparison.objects.filter(project=project)
    if not include_gold:
        queryset = queryset.filter(is_gold=False)
    if filters.adjudicated_only:
        queryset = queryset.filter(adjudication__isnull=False)
    if filters.exclude_flagged and flagged_in_sql:
        flagged = Ranking.objects.filter(comparison=OuterRef("pk")).filter(FLAGGED)
        queryset = queryset.filter(~Exists(flagged))
    return queryset


def vote_condition(*, filters: PreferenceFilters, qualified: set[int] | None) -> Q | None:
    """The vote filters (date range, qualified annotators) as one condition; None when there are none."""
    conditions = []
    if filters.start is not None:
        conditions.append(Q(created_at__gte=filters.start))
    if filters.stop is not None:
        conditions.append(Q(created_at__lt=filters.stop))
    if qualified is not None:
        conditions.append(Q(annotator_id__in=qualified))
    if not conditions:
        return None
    condition = conditions[0]
    for more in conditions[1:]:
        condition &= more
    return condition


def vote_queryset(*, filters: PreferenceFilters, qualified: set[int] | None) -> QuerySet:
    condition = vote_condition(filters=filters, qualified=qualified)
    queryset = Ranking.objects.all()
    return queryset if condition is None else queryset.filter(condition)


def adjudication_queryset(*, filters: PreferenceFilters) -> QuerySet:
    queryset = Adjudication.objects.all()
    if filters.start is not None:
        queryset = queryset.filter(updated_at__gte=filters.start)
    if filters.stop is not None:
        queryset = queryset.filter(updated_at__lt=filters.stop)
    return queryset
