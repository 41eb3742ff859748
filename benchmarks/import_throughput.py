"""Import throughput: a 50,001-line JSONL file imported in bulk vs the old per-row `full_clean` path.

    .venv/bin/python benchmarks/import_throughput.py                     # scratch SQLite file
    DATABASE_URL=postgres://u@host:5432/db .venv/bin/python benchmarks/import_throughput.py   # scratch Postgres DB
    .venv/bin/python benchmarks/import_throughput.py --lines 5001        # a quick run

The file (~8 MB at 50,001 lines): prompts, responses of those prompts, and full comparison lines (a prompt with two inline
responses, every 10th gold) in the proportions 2 : 6 : 2. Both paths run in the same process on the same
database, each into its own fresh project, after the same `import_plan` (parsing and per-line validation):
- `bulk`: `labeling.services.imports.import_apply` (foreign keys and existing rows resolved with one query per
  chunk, field rules checked without queries, rows inserted with bulk_create, one transaction);
- `baseline`: the import as it was before (per row `full_clean()`, whose foreign-key checks cost one query each,
  and `comparison_get_or_create` per comparison line), kept below verbatim in `baseline_apply`.
Prints one JSON object; `speedup` = baseline seconds / bulk seconds (writing phase) and `speedup_end_to_end`
includes the shared validation (`import_plan`) in both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.export_throughput import _django, _postgres_scratch  # noqa: E402

WORDS = (
    "the model answer question helpful correct safe explain step result because however example data value "
    "first second then therefore consider case simple method number reason"
).split()


def make_file(lines: int, seed: int = 0) -> bytes:
    """`lines` JSONL lines: 20% prompts, 60% responses (3 per prompt), 20% comparisons (the rest)."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    prompts = lines // 5
    out = []
    for p in range(prompts):
        out.append({"external_id": f"p{p}", "prompt": text(8), "domain": "bench", "metadata": {"n": p}})
    for p in range(prompts):
        for r in range(3):
            out.append({"prompt_external_id": f"p{p}", "content": text(8), "source": f"m{r}"})
    for c in range(lines - 4 * prompts):
        line = {
            "external_id": f"c{c}",
            "prompt": text(8),
            "responses": [{"content": text(6), "source": "a"}, {"content": text(6), "source": "b"}],
            "priority": rng.random(),
        }
        if c % 10 == 0:
            line.update(is_gold=True, expected_ranking=[1, 2])
        out.append(line)
    return ("\n".join(json.dumps(line) for line in out) + "\n").encode()


def baseline_apply(*, project_slug: str, plan):
    """The import's writing phase before bulk validation (commit 661e2b1), verbatim but for names."""
    from django.db import transaction

    from labeling.models import Comparison, Prompt, Response
    from labeling.services.import_parsing import ImportReport
    from labeling.services.projects import comparison_get_or_create, project_get_or_create

    with transaction.atomic():
        project, _ = project_get_or_create(slug=project_slug)
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
        if new_prompts and new_prompts[0].pk is None:
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
        by_key = {
            (response.prompt.external_id, response.external_id): response
            for response in Response.objects.filter(prompt__project=project).select_related("prompt")
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
            report.comparisons_created += created
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_001)
    parser.add_argument("--no-baseline", action="store_true", help="Time the bulk import only.")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="import-bench-"))
    os.environ.setdefault("VAR_DIR", str(workdir / "var"))
    url = os.environ.get("DATABASE_URL", "")
    drop = None
    if url.startswith("postgres"):
        url, drop = _postgres_scratch(url)
    else:
        url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    try:
        _django(url)
        from django.core.management import call_command
        from django.db import connection

        from labeling.models import Comparison, Response
        from labeling.services.import_parsing import import_plan
        from labeling.services.imports import import_apply

        call_command("migrate", verbosity=0, interactive=False)
        data = make_file(args.lines)
        result = {
            "database": connection.vendor,
            "lines": args.lines,
            "bytes": len(data),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        started = time.perf_counter()
        plan = import_plan(data=data, fmt="jsonl")
        result["validate_s"] = round(time.perf_counter() - started, 3)
        result["rows"] = plan.rows

        started = time.perf_counter()
        report = import_apply(project_slug="bench-bulk", plan=plan)
        result["bulk_s"] = round(time.perf_counter() - started, 3)
        result["bulk_report"] = report.summary()
        counts = (
            Response.objects.filter(prompt__project__slug="bench-bulk").count(),
            Comparison.objects.filter(project__slug="bench-bulk").count(),
        )
        if not args.no_baseline:
            started = time.perf_counter()
            old = baseline_apply(project_slug="bench-baseline", plan=plan)
            result["baseline_s"] = round(time.perf_counter() - started, 3)
            result["baseline_report"] = old.summary()
            assert counts == (
                Response.objects.filter(prompt__project__slug="bench-baseline").count(),
                Comparison.objects.filter(project__slug="bench-baseline").count(),
            ), "the two paths imported different rows"
            result["speedup"] = round(result["baseline_s"] / result["bulk_s"], 1)
            result["speedup_end_to_end"] = round(
                (result["validate_s"] + result["baseline_s"]) / (result["validate_s"] + result["bulk_s"]), 1
            )
        connection.close()
        print(json.dumps(result, indent=2))
    finally:
        if drop is not None:
            drop()


if __name__ == "__main__":
    main()
