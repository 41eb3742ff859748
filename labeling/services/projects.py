"""Projects, comparisons built from responses, and adjudication."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from itertools import combinations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from core.roles import Role
from core.selectors import user_has_role
from labeling.models import (
    MAX_K,
    MIN_K,
    Adjudication,
    Comparison,
    ComparisonResponse,
    Project,
    Prompt,
    Response,
)
from labeling.ranks import ranks_validate

PAIRINGS = ("all", "disjoint")


@transaction.atomic
def project_get_or_create(*, slug: str, defaults: Mapping | None = None) -> tuple[Project, bool]:
    project = Project.objects.filter(slug=slug).first()
    if project is not None:
        return project, False
    fields = {"name": slug.replace("-", " ").replace("_", " ").title()}
    fields.update(defaults or {})
    project = Project(slug=slug, **fields)
    project.full_clean()
    project.save()
    return project, True


def response_key(response_ids: Sequence[int]) -> str:
    return "-".join(str(rid) for rid in sorted(response_ids))


@transaction.atomic
def comparison_get_or_create(
    *,
    prompt: Prompt,
    responses: Sequence[Response],
    priority: float = 0.0,
    is_gold: bool = False,
    expected_ranks: Mapping | None = None,
    external_id: str = "",
) -> tuple[Comparison, bool]:
    """A comparison of these responses of one prompt, in this order; the same set is compared once per project."""
    ids = [response.pk for response in responses]
    if not MIN_K <= len(ids) <= MAX_K:
        raise ValidationError(
            {"responses": f"A comparison has {MIN_K} to {MAX_K} responses, not {len(ids)}."}
        )
    if len(set(ids)) != len(ids):
        raise ValidationError({"responses": "A response appears twice in the comparison."})
    if any(response.prompt_id != prompt.pk for response in responses):
        raise ValidationError({"responses": "All responses of a comparison answer its prompt."})
    project = prompt.project
    key = response_key(ids)
    existing = Comparison.objects.filter(project=project, response_key=key).first()
    if existing is not None:
        return existing, False
    expected = None
    if is_gold:
        if expected_ranks is None:
            raise ValidationError({"expected_ranks": "A gold comparison needs its expected ranking."})
        expected = ranks_validate(
            ranks=expected_ranks, response_ids=ids, allow_ties=True, field="expected_ranks"
        )
    comparison = Comparison(
        project=project,
        prompt=prompt,
        external_id=external_id,
        k=len(ids),
        response_key=key,
        priority=priority,
        is_gold=is_gold,
        expected_ranks=expected,
    )
    comparison.full_clean(validate_unique=False, validate_constraints=False)
    comparison.save()
    ComparisonResponse.objects.bulk_create(
        ComparisonResponse(comparison=comparison, response_id=rid, position=position)
        for position, rid in enumerate(ids)
    )
    return comparison, True


@transaction.atomic
def comparisons_build(
    *,
    project: Project,
    k: int | None = None,
    pairing: str = "all",
    max_per_prompt: int | None = None,
    seed: int = 0,
    prompts: Sequence[Prompt] | None = None,
) -> int:
    """Build comparisons of k responses for every prompt with at least k responses; returns how many are new.

    pairing "all": every k-subset of a prompt's responses (every pair for k=2); "disjoint": the responses are
    shuffled (seeded) and split into groups of k, each response in one comparison. `max_per_prompt` caps both.
    Idempotent: sets already compared are skipped.
    """
    k = k or project.k
    if not MIN_K <= k <= MAX_K:
        raise ValidationError({"k": f"k must be between {MIN_K} and {MAX_K}."})
    if pairing not in PAIRINGS:
        raise ValidationError({"pairing": f"Pairing is one of {', '.join(PAIRINGS)}."})
    rng = random.Random(seed)
    queryset = prompts if prompts is not None else Prompt.objects.filter(project=project).order_by("id")
    created = 0
    for prompt in queryset:
        responses = list(prompt.responses.order_by("id"))
        if len(responses) < k:
            continue
        if pairing == "all":
            groups = [list(group) for group in combinations(responses, k)]
        else:
            shuffled = responses[:]
            rng.shuffle(shuffled)
            groups = [shuffled[i : i + k] for i in range(0, len(shuffled) - k + 1, k)]
        if max_per_prompt is not None:
            groups = groups[:max_per_prompt]
        for group in groups:
            _, was_created = comparison_get_or_create(prompt=prompt, responses=group)
            created += was_created
    return created


@transaction.atomic
def adjudication_record(
    *, comparison: Comparison, adjudicator, ranks: Mapping, note: str = ""
) -> Adjudication:
    """Record (or replace) an admin's final ranking of a comparison."""
    if not user_has_role(user=adjudicator, role=Role.ADMIN):
        raise PermissionDenied("Only admins adjudicate.")
    response_ids = list(comparison.items.order_by("position").values_list("response_id", flat=True))
    dense = ranks_validate(ranks=ranks, response_ids=response_ids, allow_ties=comparison.project.allow_ties)
    adjudication = Adjudication.objects.filter(comparison=comparison).first() or Adjudication(
        comparison=comparison
    )
    adjudication.adjudicator = adjudicator
    adjudication.ranks = dense
    adjudication.note = note.strip()
    adjudication.full_clean(validate_unique=False, validate_constraints=False)
    adjudication.save()
    return adjudication
