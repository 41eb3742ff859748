"""The dataset card of an export (its README.md): Hugging Face card metadata, how to load it, what it holds and
which filters made it. The layout is the template `exports/dataset_card.md`; this module works out its values."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.template.loader import render_to_string

from exports.filters import PreferenceFilters
from labeling.models import Project

LOADERS = {
    "jsonl": 'load_dataset("json", data_files="{data_file}", split="train")',
    "parquet": 'load_dataset("parquet", data_files="{data_file}", split="train")',
    "hf": 'load_from_disk("{data_file}")',
}
USES = {
    "pairwise": "`DPOTrainer`, `RewardTrainer` (conversational preference; `margin` is the rank distance)",
    "ranking": "k-way rankings with ties (`ranks`: 1 is best, equal ranks are ties)",
    "sft": "`SFTTrainer` (conversational `messages`)",
    "kto": "`KTOTrainer` (unpaired preference: `prompt`, `completion`, `label`)",
    "raw": "analysis: every ranking with a pseudonymised annotator id, timings and flags",
}
TAGS = {"pairwise": "dpo", "ranking": "ranking", "sft": "sft", "kto": "kto", "raw": "annotations"}
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def dataset_card(
    *,
    project: Project,
    format: str,
    file_type: str,
    filters: PreferenceFilters,
    result_rows: int,
    content_hash: str,
    stats: dict[str, Any],
    counts: dict[str, int] | None,
    created_at: datetime,
    data_file: str,
) -> str:
    """README.md for an export: YAML front matter (Hugging Face card metadata) and what the data is.

    Every value reaches the template as text, formatted here, so that no locale setting changes a number."""
    agreement = stats.get("mean_agreement")
    context = {
        "tag": TAGS[format],
        "size_category": _size_category(result_rows),
        "project": project,
        "format": format,
        "file_type": file_type,
        "created_at": created_at.isoformat(),
        "use": USES[format],
        "load_function": "load_from_disk" if file_type == "hf" else "load_dataset",
        "loader": LOADERS[file_type].format(data_file=data_file),
        "rows": str(result_rows),
        "comparisons": str(stats.get("comparisons", 0)),
        "content_hash": content_hash,
        "agreement": "n/a" if agreement is None else str(agreement),
        "comparisons_with_agreement": str(stats.get("comparisons_with_agreement", 0)),
        "counts": " / ".join(
            str(counts[name]) for name in ("comparisons", "adjudicated", "votes", "annotators")
        )
        if counts
        else "",
        "sources": _listing(stats.get("sources")),
        "labels": _listing(stats.get("labels")),
        "domains": _listing(stats.get("domains")),
        "filters": json.dumps(filters.to_dict(), indent=2, sort_keys=True),
    }
    return render_to_string("exports/dataset_card.md", context)


def _listing(counter: dict[str, int] | None) -> str:
    """ "name: n, name: n" in the counter's order; empty when there is nothing to list."""
    return ", ".join(f"{name}: {n}" for name, n in (counter or {}).items())


def _size_category(rows: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if rows < limit:
            return name
    return "1M<n<10M" if rows < 10_000_000 else "n>10M"
