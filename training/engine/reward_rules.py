"""Rule-based rewards: built-in, configurable reward functions for reward optimisation against fixed criteria.

A rule is data, never code: a small dict such as

    {"kind": "keyword", "keywords": ["because"], "weight": 1.0}
    {"kind": "regex", "pattern": "^\\d+$", "ignore_case": false}
    {"kind": "length", "target": 200, "tolerance": 150, "unit": "chars"}
    {"kind": "json", "required_keys": ["name", "age"]}
    {"kind": "reference_exact", "field": "reference", "answer_pattern": "answer:\\s*(.+)"}
    {"kind": "reference_regex", "field": "reference"}

is validated once into a frozen dataclass (`parse_rule`), with an error that names the rule and the field. Every
rule scores a completion in [0, 1]; a rule set's reward is the weighted sum (a negative weight makes a penalty).
Regular expressions come from configuration or from a prompt's reference field and are only ever matched, never
executed as code; patterns are length-limited to keep matching cheap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

MAX_PATTERN_LENGTH = 500


class RuleSpecError(ValueError):
    """A rule specification is invalid; the message says which rule and which field."""


@dataclass(frozen=True)
class KeywordRule:
    """Keyword presence. match="any": 1 if one keyword occurs; "all": 1 if all occur; "fraction": share present;
    "count": occurrences of all keywords together, capped at `max_count` and divided by it."""

    keywords: tuple[str, ...]
    match: str = "any"
    case_sensitive: bool = False
    whole_word: bool = False
    max_count: int = 1
    weight: float = 1.0
    kind: ClassVar[str] = "keyword"

    def __post_init__(self) -> None:
        if not self.keywords or not all(isinstance(word, str) and word for word in self.keywords):
            raise RuleSpecError("keyword rule: 'keywords' must be a non-empty list of non-empty strings")
        _require_choice("keyword", "match", self.match, ("any", "all", "fraction", "count"))
        if self.max_count < 1:
            raise RuleSpecError("keyword rule: 'max_count' must be at least 1")

    def _pattern(self, word: str) -> re.Pattern:
        body = re.escape(word)
        if self.whole_word:
            body = rf"(?<!\w){body}(?!\w)"
        return re.compile(body, 0 if self.case_sensitive else re.IGNORECASE)

    def score(self, completion: str, row: Mapping[str, Any]) -> float:
        counts = [len(self._pattern(word).findall(completion)) for word in self.keywords]
        present = [count > 0 for count in counts]
        if self.match == "any":
            return float(any(present))
        if self.match == "all":
            return float(all(present))
        if self.match == "fraction":
            return sum(present) / len(present)
        return min(sum(counts), self.max_count) / self.max_count


@dataclass(frozen=True)
class RegexRule:
    """1 if the pattern is found in the completion (`full_match`: the whole stripped completion must match)."""

    pattern: str
    ignore_case: bool = False
    multiline: bool = False
    dotall: bool = False
    full_match: bool = False
    weight: float = 1.0
    kind: ClassVar[str] = "regex"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", _compile("regex rule", self.pattern, self._flags()))

    def _flags(self) -> int:
        return (
            (re.IGNORECASE if self.ignore_case else 0)
            | (re.MULTILINE if self.multiline else 0)
            | (re.DOTALL if self.dotall else 0)
        )

    def score(self, completion: str, row: Mapping[str, Any]) -> float:
        compiled: re.Pattern = self._compiled  # type: ignore[attr-defined]
        if self.full_match:
            return float(compiled.fullmatch(completion.strip()) is not None)
        return float(compiled.search(completion) is not None)


@dataclass(frozen=True)
class LengthRule:
    """1 at exactly `target` characters/words, falling linearly to 0 at `tolerance` away from it."""

    target: int
    tolerance: int
    unit: str = "chars"
    weight: float = 1.0
    kind: ClassVar[str] = "length"

    def __post_init__(self) -> None:
        if self.target < 0:
            raise RuleSpecError("length rule: 'target' must be >= 0")
        if self.tolerance < 1:
            raise RuleSpecError("length rule: 'tolerance' must be >= 1")
        _require_choice("length", "unit", self.unit, ("chars", "words"))

    def score(self, completion: str, row: Mapping[str, Any]) -> float:
        length = len(completion) if self.unit == "chars" else len(completion.split())
        return max(0.0, 1.0 - abs(length - self.target) / self.tolerance)


@dataclass(frozen=True)
class JsonRule:
    """1 if the completion (or the body of its ```json fenced block) parses as JSON; with `required_keys`,
    it must be an object holding all of them."""

    required_keys: tuple[str, ...] = ()
    allow_code_fence: bool = True
    weight: float = 1.0
    kind: ClassVar[str] = "json"

    _FENCE: ClassVar[re.Pattern] = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL)

    def __post_init__(self) -> None:
        if not all(isinstance(key, str) and key for key in self.required_keys):
            raise RuleSpecError("json rule: 'required_keys' must be a list of non-empty strings")

    def score(self, completion: str, row: Mapping[str, Any]) -> float:
        text = completion.strip()
        if self.allow_code_fence and (fenced := self._FENCE.search(text)):
            text = fenced.group(1).strip()
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return 0.0
        if self.required_keys:
            return float(isinstance(value, dict) and all(key in value for key in self.required_keys))
        return 1.0


@dataclass(frozen=True)
class ReferenceExactRule:
    """1 if the completion equals the prompt's reference answer (row[`field`]) after normalisation.

    `answer_pattern` (a regex with one group) first extracts the answer from the completion, e.g.
    "answer:\\s*(.+)"; without a match the score is 0. Normalisation strips, collapses whitespace and, unless
    `case_sensitive`, lower-cases both sides.
    """

    field: str = "reference"
    answer_pattern: str | None = None
    case_sensitive: bool = False
    weight: float = 1.0
    kind: ClassVar[str] = "reference_exact"

    def __post_init__(self) -> None:
        if not self.field:
            raise RuleSpecError("reference_exact rule: 'field' must name the column holding the reference")
        if self.answer_pattern is not None:
            compiled = _compile("reference_exact rule 'answer_pattern'", self.answer_pattern, 0)
            if compiled.groups != 1:
                raise RuleSpecError(
                    "reference_exact rule: 'answer_pattern' must have exactly one capture group"
                )
            object.__setattr__(self, "_answer", compiled)

    def _normalise(self, text: str) -> str:
        text = " ".join(text.split())
        return text if self.case_sensitive else text.lower()

    def score(self, completion: str, row: Mapping[str, Any]) -> float:
        reference = _reference(row, self.field, self.kind)
        if self.answer_pattern is not None:
            found = self._answer.search(completion)  # type: ignore[attr-defined]
            if found is None:
                return 0.0
            completion = found.group(1)
        return float(self._normalise(completion) == self._normalise(str(reference)))


@dataclass(frozen=True)
class ReferenceRegexRule:
    """1 if the completion matches the regex stored in the prompt's reference field (row[`field`])."""

    field: str = "reference"
    ignore_case: bool = False
    full_match: bool = False
    weight: float = 1.0
    kind: ClassVar[str] = "reference_regex"

    def __post_init__(self) -> None:
        if not self.field:
            raise RuleSpecError("reference_regex rule: 'field' must name the column holding the pattern")
        object.__setattr__(self, "_compiled_by_pattern", {})

    def score(self, completion: str, row: Mapping[str, Any]) -> float:
        pattern = str(_reference(row, self.field, self.kind))
        cache: dict[str, re.Pattern] = self._compiled_by_pattern  # type: ignore[attr-defined]
        if pattern not in cache:
            cache[pattern] = _compile(
                f"reference_regex rule (pattern from field {self.field!r})",
                pattern,
                re.IGNORECASE if self.ignore_case else 0,
            )
        if self.full_match:
            return float(cache[pattern].fullmatch(completion.strip()) is not None)
        return float(cache[pattern].search(completion) is not None)


Rule = KeywordRule | RegexRule | LengthRule | JsonRule | ReferenceExactRule | ReferenceRegexRule
RULE_TYPES: dict[str, type] = {
    rule_type.kind: rule_type
    for rule_type in (KeywordRule, RegexRule, LengthRule, JsonRule, ReferenceExactRule, ReferenceRegexRule)
}
# JSON gives lists where the dataclasses hold tuples (frozen, hashable).
_TUPLE_FIELDS = {"keywords", "required_keys"}


def parse_rule(spec: Mapping[str, Any] | Rule, position: int | None = None) -> Rule:
    """Validate one rule spec (a dict from configuration) into its dataclass; errors name the rule and field."""
    if isinstance(spec, tuple(RULE_TYPES.values())):
        return spec  # already validated
    where = f"rule #{position}" if position is not None else "rule"
    if not isinstance(spec, Mapping):
        raise RuleSpecError(f"{where}: expected a mapping with a 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in RULE_TYPES:
        raise RuleSpecError(f"{where}: unknown kind {kind!r}; choose one of {sorted(RULE_TYPES)}")
    rule_type = RULE_TYPES[kind]
    allowed = {field.name for field in fields(rule_type)}
    unknown = sorted(set(spec) - allowed - {"kind"})
    if unknown:
        raise RuleSpecError(f"{where} ({kind}): unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    required = {field.name for field in fields(rule_type) if _has_no_default(field)}
    missing = sorted(required - set(spec))
    if missing:
        raise RuleSpecError(f"{where} ({kind}): missing required field(s) {missing}")
    arguments = {}
    for field in fields(rule_type):
        if field.name not in spec:
            continue
        value = spec[field.name]
        arguments[field.name] = _coerce(where, kind, field, value)
    try:
        return rule_type(**arguments)
    except RuleSpecError as error:
        raise RuleSpecError(f"{where}: {error}") from None


def parse_rules(specs: Sequence[Mapping[str, Any] | Rule]) -> list[Rule]:
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Sequence):
        raise RuleSpecError("rules must be a list of rule specs")
    if not specs:
        raise RuleSpecError("rules must hold at least one rule spec")
    return [parse_rule(spec, position) for position, spec in enumerate(specs)]


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    values = asdict(rule)
    return {
        "kind": rule.kind,
        **{key: list(value) if isinstance(value, tuple) else value for key, value in values.items()},
    }


class RuleReward:
    """A weighted sum of rules; `score` returns one float per completion."""

    def __init__(self, specs: Sequence[Mapping[str, Any] | Rule]):
        self.rules = parse_rules(specs)

    def score(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[float]:
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        return [
            sum(rule.weight * rule.score(completion, row) for rule in self.rules)
            for completion, row in zip(completions, rows, strict=True)
        ]


def _has_no_default(field) -> bool:
    from dataclasses import MISSING

    return field.default is MISSING and field.default_factory is MISSING


def _coerce(where: str, kind: str, field, value):
    name = field.name
    if name in _TUPLE_FIELDS:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise RuleSpecError(f"{where} ({kind}): '{name}' must be a list of strings")
        return tuple(value)
    expected = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    if expected == "bool" and not isinstance(value, bool):
        raise RuleSpecError(f"{where} ({kind}): '{name}' must be true or false")
    if expected == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise RuleSpecError(f"{where} ({kind}): '{name}' must be an integer")
    if expected == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RuleSpecError(f"{where} ({kind}): '{name}' must be a number")
        return float(value)
    if expected == "str" and not isinstance(value, str):
        raise RuleSpecError(f"{where} ({kind}): '{name}' must be a string")
    if expected == "str | None" and value is not None and not isinstance(value, str):
        raise RuleSpecError(f"{where} ({kind}): '{name}' must be a string or null")
    return value


def _require_choice(kind: str, name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RuleSpecError(f"{kind} rule: '{name}' must be one of {list(choices)}, got {value!r}")


def _compile(what: str, pattern: str, flags: int) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise RuleSpecError(f"{what}: the pattern must be a non-empty string")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise RuleSpecError(f"{what}: the pattern is longer than {MAX_PATTERN_LENGTH} characters")
    try:
        return re.compile(pattern, flags)
    except re.error as error:
        raise RuleSpecError(f"{what}: invalid regular expression {pattern!r}: {error}") from None


def _reference(row: Mapping[str, Any], field: str, kind: str):
    if field not in row or row[field] is None:
        raise RuleSpecError(f"{kind} rule: the prompt row has no {field!r} value (columns: {sorted(row)})")
    return row[field]
