"""Leasing under concurrency on Postgres: SELECT … FOR UPDATE SKIP LOCKED never hands out a comparison beyond its
overlap, and no ranking is lost or duplicated."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection, connections

from labeling.models import Assignment, Ranking
from labeling.services.leasing import assignment_lease_next
from labeling.services.rankings import ranking_submit
from tests.labeling.factories import make_comparison, make_project, make_user

THREADS = 16

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="row locks (SELECT … FOR UPDATE SKIP LOCKED) need Postgres: run under scripts/test-services.sh",
    ),
]


@pytest.fixture(autouse=True, params=[True, False], ids=["lease-function", "python-lease"])
def hot_path_in_database(request, settings):
    """Every race runs on both lease paths: labeling_lease_regular() and the Python transaction."""
    settings.DB_HOT_PATH_FUNCTIONS = request.param
    return request.param


def _run_threads(target, users):
    barrier = threading.Barrier(len(users))
    errors: list[BaseException] = []

    def worker(user):
        try:
            barrier.wait()
            target(user)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


def test_simultaneous_leases_never_exceed_overlap():
    project = make_project("race", overlap=3)
    comparisons = [make_comparison(project) for _ in range(2)]
    users = [make_user(f"t{i}") for i in range(THREADS)]
    leased: list[int | None] = []
    lock = threading.Lock()

    def lease(user):
        assignment = assignment_lease_next(project=project, annotator=user)
        with lock:
            leased.append(assignment.comparison_id if assignment else None)

    _run_threads(lease, users)
    counts = Counter(cid for cid in leased if cid is not None)
    assert counts == {comparisons[0].id: 3, comparisons[1].id: 3}
    assert leased.count(None) == THREADS - 6
    assert Assignment.objects.count() == 6


def test_annotators_racing_through_the_queue_lose_and_duplicate_nothing():
    project = make_project("loop", overlap=3)
    comparisons = [make_comparison(project, priority=i % 3) for i in range(24)]
    users = [make_user(f"w{i}") for i in range(THREADS)]
    submitted: list[tuple[int, int]] = []
    lock = threading.Lock()

    def annotate(user):
        while True:
            assignment = assignment_lease_next(project=project, annotator=user)
            if assignment is None:
                return
            ranking = ranking_submit(assignment_id=assignment.pk, annotator=user, choice="a")
            with lock:
                submitted.append((ranking.comparison_id, user.pk))

    _run_threads(annotate, users)
    per_comparison = Counter(cid for cid, _ in submitted)
    assert len(submitted) == len(set(submitted))  # nobody ranked an item twice
    assert all(per_comparison[c.id] == 3 for c in comparisons)  # every item exactly at its overlap
    stored = set(Ranking.objects.values_list("comparison_id", "annotator_id"))
    assert stored == set(submitted) and Ranking.objects.count() == len(submitted) == 24 * 3
    assert not Assignment.objects.filter(state=Assignment.State.LEASED).exists()
