"""Factories for the labeling tests (and the API tests): users with roles, projects with comparisons."""

from __future__ import annotations

import itertools

from django.contrib.auth.models import Group

from core.services import user_create_or_update
from labeling.models import Project, Prompt, Response
from labeling.services.projects import comparison_get_or_create

_counter = itertools.count()
PASSWORD = "pw-for-tests-123"  # every factory-made user's


def make_user(username: str, role: str = "annotator", password: str = PASSWORD):
    # transaction=True tests flush the tables, role groups from the data migration included.
    Group.objects.get_or_create(name=role)
    user, _ = user_create_or_update(username=username, role=role, password=password, validate=False)
    return user


def make_project(slug: str = "p", **fields) -> Project:
    defaults = {
        "name": slug,
        "mode": "pairwise",
        "k": 2,
        "overlap": 2,
        "gold_ratio": 0.0,
        "lease_seconds": 600,
    }
    defaults.update(fields)
    project = Project(slug=slug, **defaults)
    project.full_clean()
    project.save()
    return project


def make_comparison(
    project: Project, k: int = 2, *, priority: float = 0.0, is_gold: bool = False, text: str = ""
):
    n = next(_counter)
    prompt = Prompt.objects.create(
        project=project, external_id=f"p{n}", messages=[{"role": "user", "content": text or f"Question {n}?"}]
    )
    responses = [
        Response.objects.create(
            prompt=prompt, external_id=f"r{n}-{i}", content=f"Answer {i} to {n}", source_name=f"m{i}"
        )
        for i in range(k)
    ]
    expected = {str(r.pk): i + 1 for i, r in enumerate(responses)} if is_gold else None
    comparison, _ = comparison_get_or_create(
        prompt=prompt, responses=responses, priority=priority, is_gold=is_gold, expected_ranks=expected
    )
    return comparison
