"""The demo project: hand-written prompts (some multi-turn) with 2–4 shipped responses of varied quality.

The data lives in labeling/fixtures/demo_seed.jsonl in the import format and goes through the same validation
as any import. Prompts with four responses become one 4-way comparison, the others one pairwise comparison per
pair of responses; prompts whose metadata has a `gold_order` (response external ids, best first) become gold
comparisons with that expected ranking. Running it again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from labeling.models import Comparison, Project, Prompt
from labeling.services.import_parsing import import_plan
from labeling.services.imports import import_apply
from labeling.services.projects import comparison_get_or_create, comparisons_build, project_get_or_create

DEMO_SEED_FILE = Path(__file__).resolve().parent.parent / "fixtures" / "demo_seed.jsonl"

DEMO_GUIDELINES = """\
Rank the responses by how **helpful, correct and safe** they are for the person who asked.

1. **Correctness first.** A wrong answer is worse than a short right one.
2. **Safety.** Refusing to help with harm is good; helping with harm is the worst outcome. Flag it (`f`).
3. **Helpfulness.** Answers the actual question, at a sensible length. Padding and filler count against it.
4. **Ties** are fine when two responses are genuinely equally good. Use *both bad* when neither is acceptable.

Skip (`s`) when you can't judge an item — that is better than guessing.
"""


@dataclass(frozen=True)
class SeedReport:
    project: Project
    created: bool
    prompts: int
    responses: int
    comparisons: int
    gold: int


@transaction.atomic
def demo_project_seed(
    *,
    slug: str = "demo",
    name: str = "Demo: helpful, correct, safe",
    overlap: int = 2,
    gold_ratio: float = 0.1,
    lease_seconds: int = 600,
    allow_ties: bool = True,
    seed_file: Path = DEMO_SEED_FILE,
) -> SeedReport:
    """Create (or complete) the demo project; idempotent."""
    project, created = project_get_or_create(
        slug=slug,
        defaults={
            "name": name,
            "guidelines": DEMO_GUIDELINES,
            "mode": Project.Mode.RANKING,
            "k": 4,
            "overlap": overlap,
            "gold_ratio": gold_ratio,
            "lease_seconds": lease_seconds,
            "allow_ties": allow_ties,
        },
    )
    plan = import_plan(data=seed_file.read_bytes(), fmt="jsonl")
    import_apply(project_slug=project.slug, plan=plan)

    prompts = list(
        Prompt.objects.filter(project=project, external_id__in=[p.external_id for p in plan.prompts])
    )
    regular: list[Prompt] = []
    for prompt in prompts:
        responses = {r.external_id: r for r in prompt.responses.all()}
        gold_order = (prompt.metadata or {}).get("gold_order")
        if gold_order:
            ordered = [responses[external_id] for external_id in gold_order]
            comparison_get_or_create(
                prompt=prompt,
                responses=ordered,
                is_gold=True,
                expected_ranks={str(r.pk): rank for rank, r in enumerate(ordered, start=1)},
            )
        else:
            regular.append(prompt)
    four_way = [p for p in regular if p.responses.count() == 4]
    pairwise = [p for p in regular if p.responses.count() < 4]
    comparisons_build(project=project, k=4, pairing="all", prompts=four_way)
    comparisons_build(project=project, k=2, pairing="all", prompts=pairwise)

    comparisons = Comparison.objects.filter(project=project)
    return SeedReport(
        project=project,
        created=created,
        prompts=Prompt.objects.filter(project=project).count(),
        responses=sum(p.responses.count() for p in prompts),
        comparisons=comparisons.count(),
        gold=comparisons.filter(is_gold=True).count(),
    )
