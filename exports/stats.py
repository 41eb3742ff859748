"""The statistics a dataset card reports, collected while an export's rows stream by."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class CardStats:
    """Dataset-card statistics, collected while rows stream by (rows are grouped by comparison or by prompt, so no
    id set is kept). The agreement sum is kept in integer millionths (agreements are rounded to 6 decimals), so
    that stats of consecutive slices merge into exactly the stats of the whole."""

    rows: int = 0
    comparisons: int = 0
    prompts: int = 0
    sources: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    domains: Counter = field(default_factory=Counter)
    agreement_micros: int = 0
    agreement_n: int = 0
    first_comparison: Any = None
    first_prompt: Any = None
    last_comparison: Any = None
    last_prompt: Any = None

    def add(self, meta: tuple, rows: int = 1) -> None:
        """`meta` is RECORD_CODECS[format].meta(record): (group key, prompt id, source, label, domain, agreement);
        `rows` consecutive rows with the same meta count as `rows` calls."""
        key, prompt_id, source, label, domain, agreement = meta
        if not self.rows:
            self.first_comparison, self.first_prompt = key, prompt_id
        self.rows += rows
        if key != self.last_comparison:
            self.last_comparison = key
            self.comparisons += 1
            if agreement is not None:
                self.agreement_micros += round(agreement * 1_000_000)
                self.agreement_n += 1
        if prompt_id != self.last_prompt:
            self.last_prompt = prompt_id
            self.prompts += 1
        if source is not None:
            self.sources[source] += rows
        if label is not None:
            self.labels["desirable" if label else "undesirable"] += rows
        self.domains[domain or "(none)"] += rows

    def merge(self, after: CardStats) -> None:
        """Add the stats of the rows that directly follow these rows (a group never spans two slices)."""
        if not after.rows:
            return
        if not self.rows:
            self.first_comparison, self.first_prompt = after.first_comparison, after.first_prompt
        self.rows += after.rows
        self.comparisons += after.comparisons - (after.first_comparison == self.last_comparison)
        self.prompts += after.prompts - (after.first_prompt == self.last_prompt)
        self.sources.update(after.sources)
        self.labels.update(after.labels)
        self.domains.update(after.domains)
        self.agreement_micros += after.agreement_micros
        self.agreement_n += after.agreement_n
        self.last_comparison, self.last_prompt = after.last_comparison, after.last_prompt

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-ready (for stats sent between processes); `from_json` reverses it."""
        # Not `asdict`: it rebuilds a Counter from (key, count) pairs, counting the pairs.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update({name: dict(data[name]) for name in ("sources", "labels", "domains")})
        for name in ("first_comparison", "last_comparison"):  # ("prompt", id) keys of sft / kto rows
            if isinstance(data[name], tuple):
                data[name] = {"prompt": data[name][1]}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CardStats:
        data = dict(data)
        for name in ("sources", "labels", "domains"):
            data[name] = Counter(data[name])
        for name in ("first_comparison", "last_comparison"):
            if isinstance(data[name], dict):
                data[name] = ("prompt", data[name]["prompt"])
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        mean = self.agreement_micros / self.agreement_n / 1_000_000 if self.agreement_n else None
        return {
            "rows": self.rows,
            "comparisons": self.comparisons,
            "prompt_groups": self.prompts,
            "sources": dict(sorted(self.sources.items())),
            "labels": dict(sorted(self.labels.items())),
            "domains": dict(self.domains.most_common(20)),
            "mean_agreement": None if mean is None else round(mean, 4),
            "comparisons_with_agreement": self.agreement_n,
        }
