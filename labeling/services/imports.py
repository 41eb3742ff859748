"""Importing prompts, responses and full comparisons from JSONL or CSV.

The whole file is parsed and validated before anything is written: one bad line and nothing is imported, with
errors that name the line and the field. Re-importing the same file changes nothing: prompts and responses are
matched by `external_id` (derived from the content when the file has none), comparisons by `external_id` or by
their set of responses. Text the database cannot store (NUL characters, lone surrogates) and non-finite numbers
(NaN, Infinity) are errors of their line and field.

Writing is in bulk: foreign keys and existing rows are looked up with one query per chunk of rows, field rules are
checked without queries, rows are inserted with bulk_create, all in one transaction.

Uploads (the page, the API, `manage.py import_data`) follow one set of rules, `import_upload_check`. An upload
becomes an `ImportJob`: its file is kept under ARTIFACT_ROOT/imports/ until the job has finished; large ones run
in the `labeling.import_run` Celery task (queue `default`), small ones during the request, through the same code.

Line kinds (detected per line, so one file may hold prompts followed by their responses):
- prompt:     {"prompt": "text"} or {"messages": [{"role", "content"}, …]}, optional external_id, domain, metadata
- response:   {"prompt_external_id", "content", "source"}, optional external_id, generation_params, model_version
- comparison: {"prompt" | "messages", "responses": [{"content", "source", optional external_id}, …]}, optional
              external_id, prompt_external_id, domain, metadata, priority, is_gold, expected_ranking (ranks in
              the order of `responses`)
In CSV the columns are the same names; messages, metadata, generation_params, responses and expected_ranking
hold JSON text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction

from labeling.models import Comparison, Project, Prompt, Response
from labeling.services.import_parsing import ImportPlan, ImportRejected, ImportReport, LineError, import_plan
from labeling.services.projects import (
    ComparisonSpec,
    comparisons_build,
    comparisons_bulk_create,
    project_get_or_create,
)
from registry.models import ModelVersion

# --- writing ----------------------------------------------------------------------------------------------

CHUNK = 2000  # rows per lookup query and per insert


def _chunks(items: list, size: int = CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _Known:
    """What the database already holds for the plan's ids: looked up with one query per chunk of rows."""

    prompts: dict[str, int] = field(default_factory=dict)  # external_id -> pk
    responses: dict[tuple[str, str], int] = field(default_factory=dict)  # (prompt ext id, ext id) -> pk


def _check_against_database(*, project: Project, plan: ImportPlan) -> _Known:
    """References and conflicts that need the database: unknown prompts, changed content under an old id.

    Returns the pks of the prompts and responses that exist already; raises ImportRejected on any conflict.
    """
    errors: list[LineError] = []
    known = _Known()
    file_prompts = {row.external_id for row in plan.prompts}
    wanted = sorted(file_prompts | {row.prompt_external_id for row in plan.responses})
    stored_messages: dict[str, list] = {}
    for chunk in _chunks(wanted):
        for pk, external_id, messages in Prompt.objects.filter(
            project=project, external_id__in=chunk
        ).values_list("id", "external_id", "messages"):
            known.prompts[external_id] = pk
            stored_messages[external_id] = messages
    for row in plan.prompts:
        if row.external_id in stored_messages and stored_messages[row.external_id] != row.messages:
            errors.append(
                LineError(row.line, "external_id", f"prompt {row.external_id!r} exists with other messages")
            )
    for row in plan.responses:
        if row.prompt_external_id not in file_prompts and row.prompt_external_id not in known.prompts:
            errors.append(
                LineError(
                    row.line, "prompt_external_id", f"no prompt {row.prompt_external_id!r} in the project"
                )
            )
    candidates = [row for row in plan.responses if row.prompt_external_id in known.prompts]
    stored_content: dict[tuple[str, str], str] = {}
    by_pk = {pk: external_id for external_id, pk in known.prompts.items()}
    for chunk in _chunks(candidates):
        for pk, prompt_id, external_id, content in Response.objects.filter(
            prompt_id__in={known.prompts[row.prompt_external_id] for row in chunk},
            external_id__in={row.external_id for row in chunk},
        ).values_list("id", "prompt_id", "external_id", "content"):
            key = (by_pk[prompt_id], external_id)
            known.responses[key] = pk
            stored_content[key] = content
    for row in plan.responses:
        old = stored_content.get((row.prompt_external_id, row.external_id))
        if old is not None and old != row.content:
            errors.append(
                LineError(row.line, "external_id", f"response {row.external_id!r} exists with other content")
            )
    versions = sorted({row.model_version_id for row in plan.responses if row.model_version_id is not None})
    if versions:
        existing_versions = set(ModelVersion.objects.filter(id__in=versions).values_list("id", flat=True))
        for row in plan.responses:
            if row.model_version_id is not None and row.model_version_id not in existing_versions:
                errors.append(
                    LineError(row.line, "model_version", f"no model version #{row.model_version_id}")
                )
    if errors:
        raise ImportRejected(sorted(errors, key=lambda e: e.line))
    return known


def _field_errors(error: ValidationError, line: int, prefix: str = "") -> list[LineError]:
    return [
        LineError(line, f"{prefix}{name}", message)
        for name, messages in error.message_dict.items()
        for message in messages
    ]


def _cleaned(instance, line: int, exclude: list[str], errors: list[LineError], prefix: str = ""):
    """Field rules of the model (lengths, types) without the queries: foreign keys are resolved in bulk."""
    try:
        instance.full_clean(exclude=exclude, validate_unique=False, validate_constraints=False)
    except ValidationError as error:
        errors.extend(_field_errors(error, line, prefix))
    return instance


def _insert(model, objects: list, progress: Callable[[int], None] | None) -> None:
    for chunk in _chunks(objects):
        model.objects.bulk_create(chunk)
        if progress:
            progress(len(chunk))


def _write_prompts(
    *, project: Project, plan: ImportPlan, known: _Known, report: ImportReport, progress=None
) -> None:
    errors: list[LineError] = []
    new = []
    for row in plan.prompts:
        if row.external_id in known.prompts:
            report.prompts_existing += 1
            continue
        prompt = Prompt(
            project=project,
            external_id=row.external_id,
            messages=row.messages,
            domain=row.domain,
            metadata=row.metadata,
        )
        new.append(_cleaned(prompt, row.line, ["project"], errors))
    if errors:
        raise ImportRejected(errors)
    _insert(Prompt, new, progress)
    if new and new[0].pk is None:  # backends without RETURNING on bulk insert
        for chunk in _chunks([p.external_id for p in new]):
            known.prompts.update(
                Prompt.objects.filter(project=project, external_id__in=chunk).values_list("external_id", "id")
            )
    else:
        known.prompts.update((prompt.external_id, prompt.pk) for prompt in new)
    report.prompts_created = len(new)


def _write_responses(*, plan: ImportPlan, known: _Known, report: ImportReport, progress=None) -> None:
    errors: list[LineError] = []
    new = []
    for row in plan.responses:
        key = (row.prompt_external_id, row.external_id)
        if key in known.responses:
            report.responses_existing += 1
            continue
        response = Response(
            prompt_id=known.prompts[row.prompt_external_id],
            external_id=row.external_id,
            content=row.content,
            source_name=row.source,
            model_version_id=row.model_version_id,
            generation_params=row.generation_params,
        )
        new.append(_cleaned(response, row.line, ["prompt", "model_version"], errors))
    if errors:
        raise ImportRejected(errors)
    _insert(Response, new, progress)
    by_pk = {pk: external_id for external_id, pk in known.prompts.items()}
    if new and new[0].pk is None:
        for chunk in _chunks(new):
            for pk, prompt_id, external_id in Response.objects.filter(
                prompt_id__in={r.prompt_id for r in chunk}, external_id__in={r.external_id for r in chunk}
            ).values_list("id", "prompt_id", "external_id"):
                known.responses[(by_pk[prompt_id], external_id)] = pk
    else:
        known.responses.update(((by_pk[r.prompt_id], r.external_id), r.pk) for r in new)
    report.responses_created = len(new)


def _write_comparisons(
    *, project: Project, plan: ImportPlan, known: _Known, report: ImportReport, progress=None
) -> None:
    rows = plan.comparisons
    with_ids = [row.external_id for row in rows if row.external_id]
    taken: set[str] = set()
    for chunk in _chunks(with_ids):
        taken.update(
            Comparison.objects.filter(project=project, external_id__in=chunk).values_list(
                "external_id", flat=True
            )
        )
    specs = []
    for row in rows:
        if row.external_id and row.external_id in taken:
            report.comparisons_existing += 1
            continue
        ids = tuple(known.responses[(row.prompt_external_id, rid)] for rid in row.response_external_ids)
        specs.append(
            ComparisonSpec(
                prompt_id=known.prompts[row.prompt_external_id],
                response_ids=ids,
                priority=row.priority,
                is_gold=row.is_gold,
                expected_ranks=(
                    dict(zip(ids, row.expected_ranking, strict=True))
                    if row.expected_ranking is not None
                    else None
                ),
                external_id=row.external_id,
            )
        )
    if progress and len(specs) < len(rows):
        progress(len(rows) - len(specs))
    created, existing = comparisons_bulk_create(project=project, specs=specs, progress=progress)
    report.comparisons_created += created
    report.comparisons_existing += existing


@transaction.atomic
def import_apply(
    *,
    project_slug: str,
    plan: ImportPlan,
    build_k: int | None = None,
    pairing: str = "all",
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Write a validated plan in one transaction (creating the project when missing).

    Foreign keys and existing rows are resolved with one query per chunk of rows and the new rows are inserted in
    bulk (no query per row). With `build_k`, comparisons of that many responses are also built for the prompts
    this file touched. `progress(n)` is called as rows are written; the total is plan.rows.
    """
    project, _ = project_get_or_create(slug=project_slug)
    known = _check_against_database(project=project, plan=plan)
    report = ImportReport(lines=plan.lines)
    _write_prompts(project=project, plan=plan, known=known, report=report, progress=progress)
    if progress and report.prompts_existing:
        progress(report.prompts_existing)
    _write_responses(plan=plan, known=known, report=report, progress=progress)
    if progress and report.responses_existing:
        progress(report.responses_existing)
    if plan.comparisons:
        _write_comparisons(project=project, plan=plan, known=known, report=report, progress=progress)
    if build_k:
        touched = {row.external_id for row in plan.prompts} | {
            row.prompt_external_id for row in plan.responses
        }
        report.comparisons_built = comparisons_build(
            project=project,
            k=build_k,
            pairing=pairing,
            prompts=[
                Prompt(pk=known.prompts[external_id])
                for external_id in sorted(touched, key=lambda external_id: known.prompts[external_id])
            ],
        )
    return report


def import_data(
    *, project_slug: str, data: bytes, fmt: str, build_k: int | None = None, pairing: str = "all"
) -> ImportReport:
    """Validate the whole file, then import it; raises ImportRejected (nothing imported) on any bad line."""
    plan = import_plan(data=data, fmt=fmt)
    return import_apply(project_slug=project_slug, plan=plan, build_k=build_k, pairing=pairing)
