"""Projects, comparisons built from responses, and adjudication."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ComparisonSpec:
    """One comparison to create in bulk: responses of one prompt, in their display order."""

    prompt_id: int
    response_ids: tuple[int, ...]
    priority: float = 0.0
    is_gold: bool = False
    expected_ranks: Mapping | None = None  # response id (int or str) -> rank; required when is_gold
    external_id: str = ""


BULK_CHUNK = 2000


@transaction.atomic
def comparisons_bulk_create(
    *, project: Project, specs: Iterable[ComparisonSpec], progress: Callable[[int], None] | None = None
) -> tuple[int, int]:
    """Create comparisons in bulk: one existence query and two inserts per chunk; returns (created, existing).

    Same rules as `comparison_get_or_create` (the same set of responses is compared once per project, a set seen
    earlier in `specs` counts as existing) without a query per comparison. The caller guarantees that each
    spec's responses answer its prompt (imports and `comparisons_build` only pair responses of one prompt).
    """
    created = existing = 0
    seen: set[str] = set()
    specs = list(specs)
    for start in range(0, len(specs), BULK_CHUNK):
        chunk = specs[start : start + BULK_CHUNK]
        keyed = []
        for spec in chunk:
            ids = list(spec.response_ids)
            if not MIN_K <= len(ids) <= MAX_K or len(set(ids)) != len(ids):
                raise ValidationError(
                    {"responses": f"A comparison has {MIN_K} to {MAX_K} distinct responses."}
                )
            keyed.append((response_key(ids), spec))
        taken = set(
            Comparison.objects.filter(
                project=project, response_key__in=[key for key, _ in keyed]
            ).values_list("response_key", flat=True)
        )
        new: list[Comparison] = []
        items: list[list[int]] = []
        for key, spec in keyed:
            if key in taken or key in seen:
                existing += 1
                continue
            seen.add(key)
            expected = None
            if spec.is_gold:
                if spec.expected_ranks is None:
                    raise ValidationError({"expected_ranks": "A gold comparison needs its expected ranking."})
                expected = ranks_validate(
                    ranks=spec.expected_ranks,
                    response_ids=spec.response_ids,
                    allow_ties=True,
                    field="expected_ranks",
                )
            comparison = Comparison(
                project=project,
                prompt_id=spec.prompt_id,
                external_id=spec.external_id,
                k=len(spec.response_ids),
                response_key=key,
                priority=spec.priority,
                is_gold=spec.is_gold,
                expected_ranks=expected,
            )
            # Field rules only: the foreign keys are known to exist, uniqueness was checked above.
            comparison.full_clean(
                exclude=["project", "prompt"], validate_unique=False, validate_constraints=False
            )
            new.append(comparison)
            items.append(list(spec.response_ids))
        Comparison.objects.bulk_create(new)
        if new and new[0].pk is None:  # backends without RETURNING on bulk insert
            pks = dict(
                Comparison.objects.filter(
                    project=project, response_key__in=[c.response_key for c in new]
                ).values_list("response_key", "id")
            )
            for comparison in new:
                comparison.pk = comparison.id = pks[comparison.response_key]
        ComparisonResponse.objects.bulk_create(
            ComparisonResponse(comparison_id=comparison.pk, response_id=rid, position=position)
            for comparison, ids in zip(new, items, strict=True)
            for position, rid in enumerate(ids)
        )
        created += len(new)
        if progress:
            progress(len(chunk))
    return created, existing


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
    Idempotent: sets already compared are skipped. Responses are read and comparisons written per chunk of
    prompts (no query per prompt or per comparison).
    """
    k = k or project.k
    if not MIN_K <= k <= MAX_K:
        raise ValidationError({"k": f"k must be between {MIN_K} and {MAX_K}."})
    if pairing not in PAIRINGS:
        raise ValidationError({"pairing": f"Pairing is one of {', '.join(PAIRINGS)}."})
    rng = random.Random(seed)
    prompt_ids = (
        [prompt.pk for prompt in prompts]
        if prompts is not None
        else list(Prompt.objects.filter(project=project).order_by("id").values_list("id", flat=True))
    )
    created = 0
    for start in range(0, len(prompt_ids), BULK_CHUNK):
        chunk = prompt_ids[start : start + BULK_CHUNK]
        answers: dict[int, list[int]] = {pid: [] for pid in chunk}
        for prompt_id, response_id in (
            Response.objects.filter(prompt_id__in=chunk).order_by("id").values_list("prompt_id", "id")
        ):
            answers[prompt_id].append(response_id)
        specs = []
        for prompt_id in chunk:
            responses = answers[prompt_id]
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
            specs.extend(ComparisonSpec(prompt_id=prompt_id, response_ids=tuple(group)) for group in groups)
        created += comparisons_bulk_create(project=project, specs=specs)[0]
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
