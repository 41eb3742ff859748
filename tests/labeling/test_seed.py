from __future__ import annotations

from collections import Counter

import pytest

from labeling.models import Comparison, Prompt
from labeling.services.seed import demo_project_seed


@pytest.mark.django_db
def test_demo_seed_is_idempotent_and_mixes_pairwise_four_way_and_gold():
    first = demo_project_seed(slug="demo")
    again = demo_project_seed(slug="demo")
    assert first.created and not again.created
    assert (first.prompts, first.comparisons, first.gold) == (again.prompts, again.comparisons, again.gold)
    assert first.prompts >= 24 and 2 * first.prompts <= first.responses <= 4 * first.prompts
    kinds = Counter((c.k, c.is_gold) for c in Comparison.objects.filter(project=first.project))
    assert kinds[(2, False)] > 0 and kinds[(4, False)] > 0 and first.gold > 0
    assert any(len(p.messages) > 1 for p in Prompt.objects.filter(project=first.project))
    assert first.project.guidelines
