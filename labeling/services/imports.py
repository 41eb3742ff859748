"""Importing prompts, responses and full comparisons from JSONL or CSV.

The whole file is parsed and validated before anything is written: one bad line and nothing is imported, with
errors that name the line and the field. Re-importing the same file changes nothing: prompts and responses are
matched by `external_id` (derived from the content when the file has none), comparisons by `external_id` or by
their set of responses.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from labeling.models import MAX_K, MIN_K, Comparison, Project, Prompt, Response
from labeling.services.projects import comparison_get_or_create, comparisons_build, project_get_or_create

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


class ImportRejected(ValidationError):
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
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


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
        return float(value)
    except (TypeError, ValueError):
        errors.append(LineError(line, key, "must be a number"))
        return 0.0


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


def _check_against_database(*, project: Project, plan: ImportPlan) -> None:
    """References and conflicts that need the database: unknown prompts, changed content under an old id."""
    from training.models import ModelVersion

    errors: list[LineError] = []
    prompt_ids = {row.external_id for row in plan.prompts}
    existing_prompts = {
        external_id: messages
        for external_id, messages in Prompt.objects.filter(project=project).values_list(
            "external_id", "messages"
        )
    }
    for row in plan.prompts:
        if row.external_id in existing_prompts and existing_prompts[row.external_id] != row.messages:
            errors.append(
                LineError(row.line, "external_id", f"prompt {row.external_id!r} exists with other messages")
            )
    referenced = {row.prompt_external_id for row in plan.responses}
    for row in plan.responses:
        if row.prompt_external_id not in prompt_ids and row.prompt_external_id not in existing_prompts:
            errors.append(
                LineError(
                    row.line, "prompt_external_id", f"no prompt {row.prompt_external_id!r} in the project"
                )
            )
    existing_responses = {
        (prompt_external_id, external_id): content
        for prompt_external_id, external_id, content in Response.objects.filter(
            prompt__project=project, prompt__external_id__in=referenced
        ).values_list("prompt__external_id", "external_id", "content")
    }
    for row in plan.responses:
        old = existing_responses.get((row.prompt_external_id, row.external_id))
        if old is not None and old != row.content:
            errors.append(
                LineError(row.line, "external_id", f"response {row.external_id!r} exists with other content")
            )
    versions = {row.model_version_id for row in plan.responses if row.model_version_id is not None}
    if versions:
        known = set(ModelVersion.objects.filter(id__in=versions).values_list("id", flat=True))
        for row in plan.responses:
            if row.model_version_id is not None and row.model_version_id not in known:
                errors.append(
                    LineError(row.line, "model_version", f"no model version #{row.model_version_id}")
                )
    if errors:
        raise ImportRejected(sorted(errors, key=lambda e: e.line))


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

    With `build_k`, comparisons of that many responses are also built for the prompts this file touched.
    `progress(n)` is called as rows are written; the total is plan.rows.
    """
    project, _ = project_get_or_create(slug=project_slug)
    _check_against_database(project=project, plan=plan)
    report = ImportReport(lines=plan.lines)

    prompts = {p.external_id: p for p in Prompt.objects.filter(project=project)}
    new_prompts = []
    for row in plan.prompts:
        if row.external_id in prompts:
            report.prompts_existing += 1
            continue
        prompt = Prompt(
            project=project,
            external_id=row.external_id,
            messages=row.messages,
            domain=row.domain,
            metadata=row.metadata,
        )
        prompt.full_clean(validate_unique=False, validate_constraints=False)
        new_prompts.append(prompt)
    for prompt in Prompt.objects.bulk_create(new_prompts, batch_size=500):
        prompts[prompt.external_id] = prompt
        report.prompts_created += 1
    if progress:
        progress(len(plan.prompts))
    if new_prompts and new_prompts[0].pk is None:  # backends without RETURNING on bulk insert
        prompts = {p.external_id: p for p in Prompt.objects.filter(project=project)}

    existing = set(
        Response.objects.filter(prompt__project=project).values_list("prompt__external_id", "external_id")
    )
    new_responses = []
    for row in plan.responses:
        if (row.prompt_external_id, row.external_id) in existing:
            report.responses_existing += 1
            continue
        response = Response(
            prompt=prompts[row.prompt_external_id],
            external_id=row.external_id,
            content=row.content,
            source_name=row.source,
            model_version_id=row.model_version_id,
            generation_params=row.generation_params,
        )
        response.full_clean(validate_unique=False, validate_constraints=False)
        new_responses.append(response)
    Response.objects.bulk_create(new_responses, batch_size=500)
    report.responses_created = len(new_responses)
    if progress:
        progress(len(plan.responses))

    if plan.comparisons:
        by_key = {
            (prompt_external_id, external_id): response
            for response in Response.objects.filter(prompt__project=project).select_related("prompt")
            for prompt_external_id, external_id in [(response.prompt.external_id, response.external_id)]
        }
        known_external = set(
            Comparison.objects.filter(project=project)
            .exclude(external_id="")
            .values_list("external_id", flat=True)
        )
        for row in plan.comparisons:
            if row.external_id and row.external_id in known_external:
                report.comparisons_existing += 1
                continue
            responses = [by_key[(row.prompt_external_id, rid)] for rid in row.response_external_ids]
            expected = (
                {str(r.pk): rank for r, rank in zip(responses, row.expected_ranking, strict=True)}
                if row.expected_ranking is not None
                else None
            )
            _, created = comparison_get_or_create(
                prompt=prompts[row.prompt_external_id],
                responses=responses,
                priority=row.priority,
                is_gold=row.is_gold,
                expected_ranks=expected,
                external_id=row.external_id,
            )
            if created:
                report.comparisons_created += 1
            else:
                report.comparisons_existing += 1
        if progress:
            progress(len(plan.comparisons))

    if build_k:
        touched = {row.external_id for row in plan.prompts} | {
            row.prompt_external_id for row in plan.responses
        }
        report.comparisons_built = comparisons_build(
            project=project,
            k=build_k,
            pairing=pairing,
            prompts=list(Prompt.objects.filter(project=project, external_id__in=touched).order_by("id")),
        )
    return report


def import_data(
    *, project_slug: str, data: bytes, fmt: str, build_k: int | None = None, pairing: str = "all"
) -> ImportReport:
    """Validate the whole file, then import it; raises ImportRejected (nothing imported) on any bad line."""
    plan = import_plan(data=data, fmt=fmt)
    return import_apply(project_slug=project_slug, plan=plan, build_k=build_k, pairing=pairing)
