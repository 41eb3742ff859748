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

import csv
import hashlib
import io
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from core.errors import RejectedInput
from core.roles import Role
from core.selectors import user_has_role
from labeling.models import MAX_K, MIN_K, Comparison, ImportJob, Project, Prompt, Response
from labeling.services.projects import (
    ComparisonSpec,
    comparisons_build,
    comparisons_bulk_create,
    project_get_or_create,
)
from registry.artifacts import artifact_path, import_upload_file, relative_to_root
from registry.models import ModelVersion

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
MAX_ERRORS_REPORTED = 20
ROLES = ("system", "user", "assistant")
JSON_COLUMNS = ("messages", "metadata", "generation_params", "responses", "expected_ranking")
PROMPT_FIELDS = {"prompt", "messages", "external_id", "domain", "metadata"}
RESPONSE_FIELDS = {
    "prompt_external_id",
    "content",
    "source",
    "external_id",
    "generation_params",
    "model_version",
}
COMPARISON_FIELDS = PROMPT_FIELDS | {
    "responses",
    "prompt_external_id",
    "priority",
    "is_gold",
    "expected_ranking",
}


def import_max_bytes() -> int:
    return int(getattr(settings, "LABELING_IMPORT_MAX_BYTES", DEFAULT_MAX_BYTES))


@dataclass(frozen=True)
class LineError:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}, field '{self.field}': {self.message}" if self.field else f"{where}: {self.message}"


class ImportRejected(RejectedInput):
    """The file was rejected; `errors` lists (line, field, message), and nothing was imported."""

    def __init__(self, errors: list[LineError], total: int | None = None):
        self.line_errors = errors
        shown = [str(error) for error in errors[:MAX_ERRORS_REPORTED]]
        more = (total or len(errors)) - len(shown)
        if more > 0:
            shown.append(f"… and {more} more errors")
        super().__init__(shown)


@dataclass
class PromptRow:
    line: int
    external_id: str
    messages: list[dict]
    domain: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass
class ResponseRow:
    line: int
    prompt_external_id: str
    external_id: str
    content: str
    source: str
    model_version_id: int | None = None
    generation_params: dict = field(default_factory=dict)


@dataclass
class ComparisonRow:
    line: int
    external_id: str
    prompt_external_id: str
    response_external_ids: list[str]
    priority: float = 0.0
    is_gold: bool = False
    expected_ranking: list[int] | None = None


@dataclass
class ImportPlan:
    prompts: list[PromptRow] = field(default_factory=list)
    responses: list[ResponseRow] = field(default_factory=list)
    comparisons: list[ComparisonRow] = field(default_factory=list)
    lines: int = 0

    @property
    def rows(self) -> int:
        return len(self.prompts) + len(self.responses) + len(self.comparisons)


@dataclass
class ImportReport:
    lines: int = 0
    prompts_created: int = 0
    prompts_existing: int = 0
    responses_created: int = 0
    responses_existing: int = 0
    comparisons_created: int = 0
    comparisons_existing: int = 0
    comparisons_built: int = 0

    def summary(self) -> str:
        return (
            f"{self.lines} lines: {self.prompts_created} prompts new ({self.prompts_existing} already there), "
            f"{self.responses_created} responses new ({self.responses_existing} already there), "
            f"{self.comparisons_created + self.comparisons_built} comparisons new "
            f"({self.comparisons_existing} already there)"
        )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:24]


def derived_prompt_id(messages: list[dict]) -> str:
    return "p-" + _digest(json.dumps(messages, sort_keys=True, ensure_ascii=False))


def derived_response_id(*, prompt_external_id: str, source: str, content: str) -> str:
    return "r-" + _digest(prompt_external_id, source, content)


# --- reading ----------------------------------------------------------------------------------------------


def _records(data: bytes, fmt: str) -> Iterator[tuple[int, dict | LineError]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield 0, LineError(0, "", f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})")
        return
    if fmt == "jsonl":
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield number, LineError(number, "", f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(value, dict):
                yield number, LineError(number, "", "each line must be a JSON object")
                continue
            yield number, value
        return
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        yield 0, LineError(0, "", "the CSV file has no header row")
        return
    for row in reader:
        number = reader.line_num
        if None in row:
            yield number, LineError(number, "", "more cells than header columns")
            continue
        record: dict = {}
        error = None
        for key, value in row.items():
            key = (key or "").strip()
            if value is None or value.strip() == "":
                continue
            if key in JSON_COLUMNS:
                try:
                    record[key] = json.loads(value)
                except json.JSONDecodeError as exc:
                    error = LineError(number, key, f"not valid JSON ({exc.msg})")
                    break
            elif key == "is_gold":
                record[key] = value.strip().lower() in {"1", "true", "yes"}
            else:
                record[key] = value
        yield number, error or record


def _unstorable(value: object) -> str | None:
    """Why a JSON value cannot be stored as text or jsonb (NUL, lone surrogates, NaN/Infinity), or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character (\\u0000), which cannot be stored"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"contains a lone surrogate (\\u{ord(value[exc.start]):04x}), which is not valid Unicode text"
            )
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _unstorable(key) or _unstorable(item)
            if problem:
                return problem
    elif isinstance(value, list):
        for item in value:
            problem = _unstorable(item)
            if problem:
                return problem
    return None


def _text(record: dict, key: str, line: int, errors: list[LineError], *, required: bool, limit: int) -> str:
    value = record.get(key)
    if value is None:
        if required:
            errors.append(LineError(line, key, "is required"))
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool) and key.endswith("external_id"):
        value = str(value)
    if not isinstance(value, str):
        errors.append(LineError(line, key, "must be a string"))
        return ""
    value = value.strip()
    if required and not value:
        errors.append(LineError(line, key, "must not be empty"))
    problem = _unstorable(value)
    if problem:
        errors.append(LineError(line, key, problem))
    if len(value) > limit:
        errors.append(LineError(line, key, f"is longer than {limit} characters"))
    return value


def _messages(record: dict, line: int, errors: list[LineError]) -> list[dict]:
    if "prompt" in record and "messages" in record:
        errors.append(LineError(line, "messages", "give either 'prompt' or 'messages', not both"))
        return []
    if "prompt" in record:
        text = _text(record, "prompt", line, errors, required=True, limit=100_000)
        return [{"role": "user", "content": text}] if text else []
    messages = record.get("messages")
    if messages is None:
        errors.append(LineError(line, "prompt", "is required (or 'messages')"))
        return []
    if not isinstance(messages, list) or not messages:
        errors.append(LineError(line, "messages", "must be a non-empty list of {role, content}"))
        return []
    cleaned = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            errors.append(
                LineError(line, f"messages[{index}]", "must be an object with 'role' and 'content'")
            )
            return []
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            errors.append(LineError(line, f"messages[{index}].role", f"must be one of {', '.join(ROLES)}"))
            return []
        if not isinstance(content, str) or not content.strip():
            errors.append(LineError(line, f"messages[{index}].content", "must be a non-empty string"))
            return []
        problem = _unstorable(content)
        if problem:
            errors.append(LineError(line, f"messages[{index}].content", problem))
            return []
        cleaned.append({"role": role, "content": content})
    if cleaned[-1]["role"] != "user":
        errors.append(LineError(line, "messages", "the last message must be the user's"))
        return []
    return cleaned


def _dict(record: dict, key: str, line: int, errors: list[LineError]) -> dict:
    value = record.get(key, {})
    if not isinstance(value, dict):
        errors.append(LineError(line, key, "must be a JSON object"))
        return {}
    problem = _unstorable(value)
    if problem:
        errors.append(LineError(line, key, problem))
        return {}
    return value


def _unknown(record: dict, allowed: set[str], line: int, errors: list[LineError]) -> None:
    for key in sorted(set(record) - allowed):
        errors.append(LineError(line, key, "unknown field"))


def _prompt_row(
    record: dict, line: int, errors: list[LineError], *, id_key: str = "external_id"
) -> PromptRow:
    messages = _messages(record, line, errors)
    external_id = _text(record, id_key, line, errors, required=False, limit=200)
    return PromptRow(
        line=line,
        external_id=external_id or (derived_prompt_id(messages) if messages else ""),
        messages=messages,
        domain=_text(record, "domain", line, errors, required=False, limit=100),
        metadata=_dict(record, "metadata", line, errors),
    )


def _response_row(
    record: dict, line: int, errors: list[LineError], prompt_external_id: str, where: str = ""
) -> ResponseRow:
    local: list[LineError] = []
    content = _text(record, "content", line, local, required=True, limit=200_000)
    source = _text(record, "source", line, local, required="model_version" not in record, limit=200)
    model_version = record.get("model_version")
    if model_version is not None and (not isinstance(model_version, int) or isinstance(model_version, bool)):
        local.append(LineError(line, "model_version", "must be a model version id (integer)"))
        model_version = None
    external_id = _text(record, "external_id", line, local, required=False, limit=200)
    params = _dict(record, "generation_params", line, local)
    errors.extend(LineError(e.line, f"{where}{e.field}", e.message) for e in local)
    return ResponseRow(
        line=line,
        prompt_external_id=prompt_external_id,
        external_id=external_id
        or derived_response_id(
            prompt_external_id=prompt_external_id, source=source or str(model_version), content=content
        ),
        content=content,
        source=source,
        model_version_id=model_version,
        generation_params=params,
    )


def _float(record: dict, key: str, line: int, errors: list[LineError]) -> float:
    value = record.get(key, 0.0)
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        errors.append(LineError(line, key, "must be a number"))
        return 0.0
    if not math.isfinite(number):
        errors.append(LineError(line, key, f"must be a finite number, not {value!r}"))
        return 0.0
    return number


def import_plan(*, data: bytes, fmt: str, progress: Callable[[int], None] | None = None) -> ImportPlan:
    """Parse and validate every line (no database access). Raises ImportRejected with every error found."""
    if fmt not in ("jsonl", "csv"):
        raise ImportRejected([LineError(0, "", f"unknown format {fmt!r}: use jsonl or csv")])
    limit = import_max_bytes()
    if len(data) > limit:
        raise ImportRejected(
            [LineError(0, "", f"the file is {len(data) / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB")]
        )
    plan = ImportPlan()
    errors: list[LineError] = []
    seen: dict[tuple[str, str], tuple[int, object]] = {}

    def remember(kind: str, key: str, line: int, payload: object, name: str = "external_id") -> bool:
        previous = seen.get((kind, key))
        if previous is None:
            seen[(kind, key)] = (line, payload)
            return True
        if previous[1] != payload:
            errors.append(
                LineError(line, name, f"{key!r} is used by line {previous[0]} for different content")
            )
        return False

    for line, record in _records(data, fmt):
        plan.lines += 1
        if progress:
            progress(1)
        if isinstance(record, LineError):
            errors.append(record)
            continue
        before = len(errors)
        if "responses" in record:
            _unknown(record, COMPARISON_FIELDS, line, errors)
            prompt = _prompt_row(record, line, errors, id_key="prompt_external_id")
            items = record.get("responses")
            if not isinstance(items, list) or not MIN_K <= len(items) <= MAX_K:
                errors.append(LineError(line, "responses", f"must be a list of {MIN_K} to {MAX_K} responses"))
                continue
            responses = []
            for index, item in enumerate(items):
                where = f"responses[{index}]."
                if not isinstance(item, dict):
                    errors.append(LineError(line, f"responses[{index}]", "must be an object"))
                    continue
                for key in sorted(set(item) - (RESPONSE_FIELDS - {"prompt_external_id"})):
                    errors.append(LineError(line, f"{where}{key}", "unknown field"))
                responses.append(_response_row(item, line, errors, prompt.external_id, where))
            if len({row.external_id for row in responses}) != len(responses):
                errors.append(LineError(line, "responses", "the same response appears twice"))
            is_gold = record.get("is_gold", False)
            if not isinstance(is_gold, bool):
                errors.append(LineError(line, "is_gold", "must be true or false"))
            expected = record.get("expected_ranking")
            if is_gold is True and expected is None:
                errors.append(LineError(line, "expected_ranking", "is required for a gold comparison"))
            if expected is not None and (
                not isinstance(expected, list)
                or len(expected) != len(items)
                or not all(
                    isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= len(items) for r in expected
                )
            ):
                errors.append(
                    LineError(
                        line, "expected_ranking", f"must list {len(items)} ranks from 1 to {len(items)}"
                    )
                )
            priority = _float(record, "priority", line, errors)
            external_id = _text(record, "external_id", line, errors, required=False, limit=200)
            if len(errors) > before:
                continue
            if remember("prompt", prompt.external_id, line, prompt.messages, "prompt_external_id"):
                plan.prompts.append(prompt)
            for row in responses:
                if remember("response", f"{row.prompt_external_id}/{row.external_id}", line, row.content):
                    plan.responses.append(row)
            if external_id and not remember(
                "comparison", external_id, line, [r.external_id for r in responses]
            ):
                continue
            plan.comparisons.append(
                ComparisonRow(
                    line=line,
                    external_id=external_id,
                    prompt_external_id=prompt.external_id,
                    response_external_ids=[row.external_id for row in responses],
                    priority=priority,
                    is_gold=is_gold,
                    expected_ranking=expected,
                )
            )
        elif "prompt_external_id" in record:
            _unknown(record, RESPONSE_FIELDS, line, errors)
            prompt_external_id = _text(record, "prompt_external_id", line, errors, required=True, limit=200)
            row = _response_row(record, line, errors, prompt_external_id)
            if len(errors) == before and remember(
                "response", f"{row.prompt_external_id}/{row.external_id}", line, row.content
            ):
                plan.responses.append(row)
        else:
            _unknown(record, PROMPT_FIELDS, line, errors)
            row = _prompt_row(record, line, errors)
            if len(errors) == before and remember("prompt", row.external_id, line, row.messages):
                plan.prompts.append(row)
    if plan.lines == 0 and not errors:
        errors.append(LineError(0, "", "the file has no records"))
    if errors:
        raise ImportRejected(errors)
    return plan


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


# --- upload rules (the page, the API and `manage.py import_data`) ------------------------------------------

UPLOAD_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# What browsers and HTTP clients send for these files (a .jsonl is often unknown to them: octet-stream).
UPLOAD_CONTENT_TYPES = {
    "jsonl": {
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
        "application/x-ndjson",
        "application/ndjson",
        "application/json",
        "text/plain",
        "application/octet-stream",
    },
    "csv": {
        "text/csv",
        "application/csv",
        "text/comma-separated-values",
        "application/vnd.ms-excel",
        "text/plain",
        "application/octet-stream",
    },
}
DEFAULT_SYNC_MAX_BYTES = 1024 * 1024


def import_sync_max_bytes() -> int:
    """Uploads up to this size import during the request; larger ones run as a background ImportJob."""
    return int(getattr(settings, "LABELING_IMPORT_SYNC_MAX_BYTES", DEFAULT_SYNC_MAX_BYTES))


def import_upload_check(*, name: str, size: int, content_type: str | None = None) -> str:
    """The format ("jsonl" or "csv") of an upload, or ValidationError({"file": why}) (extension, type, size)."""
    suffix = Path(name or "").suffix.lower()
    fmt = UPLOAD_EXTENSIONS.get(suffix)
    if fmt is None:
        raise ValidationError({"file": f"Upload a .jsonl, .ndjson or .csv file, not {name!r}."})
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind and kind not in UPLOAD_CONTENT_TYPES[fmt]:
        raise ValidationError({"file": f"A {suffix} file cannot have the content type {kind!r}."})
    limit = import_max_bytes()
    if size > limit:
        raise ValidationError(
            {
                "file": f"The file is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB "
                "(LABELING_IMPORT_MAX_BYTES). Split it."
            }
        )
    if size == 0:
        raise ValidationError({"file": "The file is empty."})
    return fmt


# --- import jobs -------------------------------------------------------------------------------------------

MAX_ERRORS_KEPT = 200
VALIDATE_SHARE = 0.4  # of a job's progress bar
PROGRESS_WRITE_S = 1.0
IMPORT_TASK = "labeling.import_run"  # labeling.tasks.import_run_task


def user_can_import(*, user) -> bool:
    return user is not None and user_has_role(user=user, role=Role.ADMIN)


def import_job_create(
    *,
    project_slug: str,
    file_name: str,
    data: bytes,
    file_format: str,
    build_k: int | None = None,
    pairing: str = "all",
    created_by,
    enqueue: bool = True,
) -> ImportJob:
    """Keep the upload under ARTIFACT_ROOT/imports/ and record a job; enqueue it on `default` after the commit."""
    if not user_can_import(user=created_by):
        raise PermissionDenied("Only admins import data.")
    job = ImportJob(
        project_slug=project_slug,
        file_name=Path(file_name).name[:255] or "upload",
        file_format=file_format,
        size_bytes=len(data),
        build_k=build_k,
        pairing=pairing,
        created_by=created_by,
    )
    job.full_clean(exclude=["upload_path"])
    with transaction.atomic():
        job.save()
        path = import_upload_file(job_id=job.pk, token=uuid.uuid4().hex[:8], file_format=file_format)
        relative = relative_to_root(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        ImportJob.objects.filter(pk=job.pk).update(upload_path=relative)
        job.upload_path = relative
        if enqueue:
            transaction.on_commit(lambda: import_job_enqueue(job=job))
    return job


def import_job_enqueue(*, job: ImportJob) -> None:
    # By name: labeling.tasks imports this module to run the job.
    result = current_app.send_task(IMPORT_TASK, args=[job.pk], queue="default")
    ImportJob.objects.filter(pk=job.pk).update(celery_task_id=result.id or "")


class _JobProgress:
    """Writes a job's progress at most once a second, on its own connection while the import's transaction is
    open (so pages see it before the commit). SQLite allows one writer: there, only phase changes are written."""

    def __init__(self, job: ImportJob):
        self.job_id = job.pk
        self.lines_total = 0
        self.lines = 0
        self.rows_total = 0
        self.rows_done = 0
        self.phase = ImportJob.Phase.VALIDATE
        self.writing = False  # inside the import's transaction: progress goes through another connection
        self._last = 0.0

    def fields(self) -> dict:
        if self.phase == ImportJob.Phase.VALIDATE:
            progress = VALIDATE_SHARE * self.lines / max(1, self.lines_total)
        else:
            progress = VALIDATE_SHARE + (1 - VALIDATE_SHARE) * self.rows_done / max(1, self.rows_total)
        return {
            "phase": self.phase,
            "lines": self.lines,
            "rows_total": self.rows_total,
            "rows_done": min(self.rows_done, self.rows_total),
            "progress": min(0.99, progress),
        }

    def write(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_WRITE_S:
            return
        self._last = now
        values = self.fields()
        if not self.writing:
            ImportJob.objects.filter(pk=self.job_id).update(**values)
        elif connection.vendor != "sqlite":
            thread = threading.Thread(target=_update_on_own_connection, args=(self.job_id, values))
            thread.start()
            thread.join()

    def line(self, count: int) -> None:
        self.lines += count
        self.write()

    def row(self, count: int) -> None:
        self.rows_done += count
        self.write()


def _update_on_own_connection(job_id: int, values: dict) -> None:
    try:
        ImportJob.objects.filter(pk=job_id).update(**values)
    finally:
        connection.close()


def _finish(job_id: int, **values) -> None:
    ImportJob.objects.filter(pk=job_id).update(finished_at=timezone.now(), **values)


def _drop_upload(job: ImportJob) -> None:
    if job.upload_path:
        artifact_path(job.upload_path).unlink(missing_ok=True)
        ImportJob.objects.filter(pk=job.pk).update(upload_path="")


def import_job_run(*, job_id: int) -> ImportJob:
    """Validate and write the job's kept upload; record progress, then the report or every bad line.

    A finished job is left alone; a running one (its worker died) runs again from the kept file. The upload is
    deleted once the job has finished either way.
    """
    job = ImportJob.objects.get(pk=job_id)
    if job.finished:
        return job
    path = artifact_path(job.upload_path) if job.upload_path else None
    if path is None or not path.is_file():
        _finish(job.pk, status=ImportJob.Status.FAILED, error="The uploaded file is gone; upload it again.")
        job.refresh_from_db()
        return job
    data = path.read_bytes()
    tracker = _JobProgress(job)
    tracker.lines_total = max(1, data.count(b"\n") + (0 if data.endswith(b"\n") else 1))
    ImportJob.objects.filter(pk=job.pk).update(
        status=ImportJob.Status.RUNNING, started_at=timezone.now(), error="", errors=[], **tracker.fields()
    )
    try:
        plan = import_plan(data=data, fmt=job.file_format, progress=tracker.line)
        tracker.phase = ImportJob.Phase.WRITE
        tracker.rows_total = plan.rows
        tracker.write(force=True)
        with transaction.atomic():
            tracker.writing = True
            report = import_apply(
                project_slug=job.project_slug,
                plan=plan,
                build_k=job.build_k,
                pairing=job.pairing,
                progress=tracker.row,
            )
            _finish(
                job.pk,
                status=ImportJob.Status.SUCCEEDED,
                progress=1.0,
                lines=plan.lines,
                rows_total=plan.rows,
                rows_done=plan.rows,
                counts={**report.__dict__, "summary": report.summary()},
            )
    except ImportRejected as rejected:
        _finish(
            job.pk,
            status=ImportJob.Status.FAILED,
            errors=[error.__dict__ for error in rejected.line_errors[:MAX_ERRORS_KEPT]],
            counts={"errors_total": len(rejected.line_errors)},
            error="Nothing was imported: " + "; ".join(rejected.messages[:3]),
        )
    except ValidationError as invalid:
        _finish(
            job.pk,
            status=ImportJob.Status.FAILED,
            error="Nothing was imported: " + " ".join(invalid.messages),
        )
    except Exception as exc:
        _finish(
            job.pk,
            status=ImportJob.Status.FAILED,
            error=f"Nothing was imported: {type(exc).__name__}: {exc}"[:2000],
        )
        _drop_upload(job)
        raise
    _drop_upload(job)
    job.refresh_from_db()
    return job


def import_job_messages(*, job: ImportJob) -> list[str]:
    """What to show for a failed job: its bad lines (as the synchronous import words them), or the error."""
    if job.errors:
        errors = [LineError(**error) for error in job.errors]
        return ImportRejected(errors, total=job.counts.get("errors_total", len(errors))).messages
    return [job.error] if job.error else []
