"""Simulated annotators: rankings from a programmatic rule, submitted through the same services people use."""

from __future__ import annotations

import random
from dataclasses import dataclass

from django.contrib.auth.models import Group

from core.roles import Role
from core.services import user_create_or_update
from labeling.models import Project
from labeling.selectors.annotation import assignment_responses
from labeling.services.leasing import assignment_lease_next
from labeling.services.rankings import ranking_submit
from loop.oracles import oracle_ranks, scorer_for


@dataclass(frozen=True)
class SimulationReport:
    annotators: int
    rankings: int


def simulated_annotator(index: int):
    Group.objects.get_or_create(name=Role.ANNOTATOR)
    user, _ = user_create_or_update(username=f"sim-annotator-{index}", role=Role.ANNOTATOR)  # cannot log in
    return user


def annotators_simulate(
    *,
    project: Project,
    oracle: str,
    annotators: int = 1,
    noise: float = 0.0,
    max_items: int | None = None,
    seed: int = 0,
) -> SimulationReport:
    """Each simulated annotator leases and ranks until the queue is empty for them (or `max_items`).

    Leasing, validation, overlap and gold items behave exactly as for people; only the ranking comes from the rule.
    """
    if annotators < 1:
        raise ValueError("annotators must be at least 1")
    if not 0 <= noise <= 1:
        raise ValueError("noise must be within [0, 1]")
    scorer = scorer_for(oracle)  # validates the rule before anything is written
    rng = random.Random(seed)
    total = 0
    for index in range(1, annotators + 1):
        person = simulated_annotator(index)
        done = 0
        while max_items is None or done < max_items:
            assignment = assignment_lease_next(project=project, annotator=person)
            if assignment is None:
                break
            shown = assignment_responses(assignment=assignment)
            ranks = oracle_ranks(
                rule=scorer,
                prompt=assignment.comparison.prompt.last_user_message,
                responses=[(item.response.pk, item.response.content) for item in shown],
                allow_ties=project.allow_ties,
                noise=noise,
                rng=rng,
            )
            ranking_submit(assignment_id=assignment.pk, annotator=person, ranks=ranks)
            done += 1
        total += done
    return SimulationReport(annotators=annotators, rankings=total)
