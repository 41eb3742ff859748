"""The dataset card: every value in its place, as the card has always been laid out (the text of `main` before
the card became a template), project names shown as they are (no HTML escaping in Markdown)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from exports.card import dataset_card
from exports.filters import PreferenceFilters
from labeling.models import Project

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
PROJECT = Project(slug="demo", name="Demo: <A & B>")

PAIRWISE_JSONL_CARD = """---
tags:
- rlhf
- preference
- dpo
size_categories: 1K<n<10K
---

# Demo: <A & B>: pairwise preferences

Exported from project `demo` on 2026-01-02T03:04:05+00:00 as jsonl. Use it with `DPOTrainer`, `RewardTrainer` (conversational preference; `margin` is the rank distance):

```python
from datasets import load_dataset
dataset = load_dataset("json", data_files="pairwise.jsonl", split="train")
```

## Contents

| | |
|---|---|
| rows | 1234 |
| comparisons (row groups) | 10 |
| content hash (sha256) | `abababababababababababababababababababababababababababababababab` |
| mean pairwise agreement of exported comparisons | 0.6667 (over 7 comparisons with 2+ votes) |
| eligible comparisons / adjudicated / votes / annotators | 12 / 1 / 30 / 4 |
| judgements by source | consensus: 3, vote: 5 |
| rows by domain (top 20) | math: 4, (none): 4 |

## Filters

```json
{
  "adjudicated_only": false,
  "aggregation": "all",
  "date_from": "2026-01-01",
  "date_to": null,
  "exclude_flagged": true,
  "gold_qualified_only": false,
  "min_agreement": 0.5
}
```

Adjudicated rankings replace the votes of their comparison; ties give no pair; gold comparisons are left out (except in `raw`). `majority` is the consensus by mean rank (for two responses, the majority vote); `all` keeps every vote. Annotator ids are keyed hashes (HMAC-SHA256 with the server's secret key). The content hash is sha256 over the rows' canonical JSON lines (sorted keys, no spaces): the same filters over the same data give the same hash, whatever the file type.
"""

KTO_HF_CARD = """---
tags:
- rlhf
- preference
- kto
size_categories: 10K<n<100K
---

# Demo: <A & B>: kto preferences

Exported from project `demo` on 2026-01-02T03:04:05+00:00 as hf. Use it with `KTOTrainer` (unpaired preference: `prompt`, `completion`, `label`):

```python
from datasets import load_from_disk
dataset = load_from_disk("dataset")
```

## Contents

| | |
|---|---|
| rows | 20000 |
| comparisons (row groups) | 0 |
| content hash (sha256) | `cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd` |
| mean pairwise agreement of exported comparisons | n/a (over 0 comparisons with 2+ votes) |
| labels | desirable: 2, undesirable: 1 |

## Filters

```json
{
  "adjudicated_only": false,
  "aggregation": "majority",
  "date_from": null,
  "date_to": null,
  "exclude_flagged": true,
  "gold_qualified_only": false,
  "min_agreement": null
}
```

Adjudicated rankings replace the votes of their comparison; ties give no pair; gold comparisons are left out (except in `raw`). `majority` is the consensus by mean rank (for two responses, the majority vote); `all` keeps every vote. Annotator ids are keyed hashes (HMAC-SHA256 with the server's secret key). The content hash is sha256 over the rows' canonical JSON lines (sorted keys, no spaces): the same filters over the same data give the same hash, whatever the file type.
"""


PAIRWISE_JSONL = {
    "format": "pairwise",
    "file_type": "jsonl",
    "filters": PreferenceFilters(min_agreement=0.5, aggregation="all", date_from="2026-01-01"),
    "result_rows": 1234,
    "content_hash": "ab" * 32,
    "stats": {
        "comparisons": 10,
        "mean_agreement": 0.6667,
        "comparisons_with_agreement": 7,
        "sources": {"consensus": 3, "vote": 5},
        "labels": {},
        "domains": {"math": 4, "(none)": 4},
    },
    "counts": {"comparisons": 12, "adjudicated": 1, "votes": 30, "annotators": 4},
    "data_file": "pairwise.jsonl",
}
# No counts, no agreement, no sources or domains: those lines are left out.
KTO_HF = {
    "format": "kto",
    "file_type": "hf",
    "filters": PreferenceFilters(),
    "result_rows": 20000,
    "content_hash": "cd" * 32,
    "stats": {
        "comparisons": 0,
        "mean_agreement": None,
        "comparisons_with_agreement": 0,
        "sources": {},
        "labels": {"desirable": 2, "undesirable": 1},
        "domains": {},
    },
    "counts": None,
    "data_file": "dataset",
}


@pytest.mark.parametrize(
    ("values", "expected"),
    [(PAIRWISE_JSONL, PAIRWISE_JSONL_CARD), (KTO_HF, KTO_HF_CARD)],
    ids=["jsonl", "hf"],
)
def test_the_card_is_laid_out_as_before(values, expected):
    assert dataset_card(project=PROJECT, created_at=CREATED, **values) == expected
