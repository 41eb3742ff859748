"""Reading an import file: every line parsed and checked, with no database access (labeling.services.imports
describes the file format and writes the result)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.conf import settings

from core.errors import RejectedInput
from labeling.models import MAX_K, MIN_K

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
