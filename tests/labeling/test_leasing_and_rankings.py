"""Leasing rules, submission validation, undo, skip, gold pacing, adjudication and DB constraints."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from labeling.models import Adjudication, Assignment, Comparison, Project, Ranking
from labeling.selectors.quality import project_gold_stats, review_queue
from labeling.services.leasing import assignment_lease_next, gold_due
from labeling.services.projects import adjudication_record
from labeling.services.rankings import assignment_skip, ranking_submit, ranking_undo_last
from tests.labeling.factories import make_comparison, make_project, make_user

pytestmark = pytest.mark.django_db


def test_overlap_distinct_annotators_priority_order(project):
    low = make_comparison(project, priority=0)
    high = make_comparison(project, priority=5)
    users = [make_user(f"u{i}") for i in range(5)]
    got = [assignment_lease_next(project=project, annotator=u) for u in users]
    # overlap 2: the high-priority item goes to the first two, the other to the next two, then nothing.
    assert [a.comparison_id if a else None for a in got] == [high.id, high.id, low.id, low.id, None]
    # The same person asking again gets their live lease back, not a second item.
    assert assignment_lease_next(project=project, annotator=users[0]).pk == got[0].pk


def test_never_twice_to_the_same_person_and_complete_status(project, annotator):
    comparison = make_comparison(project)
    a = assignment_lease_next(project=project, annotator=annotator)
    ranking_submit(assignment_id=a.pk, annotator=annotator, choice="a")
    assert assignment_lease_next(project=project, annotator=annotator) is None
    other = make_user("other")
    b = assignment_lease_next(project=project, annotator=other)
    ranking_submit(assignment_id=b.pk, annotator=other, choice="b")
    comparison.refresh_from_db()
    assert comparison.status == Comparison.Status.COMPLETE
    assert assignment_lease_next(project=project, annotator=make_user("third")) is None


def test_expired_lease_returns_to_the_pool(annotator, annotator2):
    project = make_project("lease", overlap=1, lease_seconds=60)
    make_comparison(project)
    now = timezone.now()
    first = assignment_lease_next(project=project, annotator=annotator, now=now)
    assert (
        assignment_lease_next(project=project, annotator=annotator2, now=now + timedelta(seconds=30)) is None
    )
    later = now + timedelta(seconds=61)
    second = assignment_lease_next(project=project, annotator=annotator2, now=later)
    assert second is not None and second.comparison_id == first.comparison_id
    # The first annotator's late submission would exceed the overlap: refused, nothing stored.
    with pytest.raises(ValidationError, match="went to another annotator"):
        ranking_submit(assignment_id=first.pk, annotator=annotator, choice="a", now=later)
    assert Ranking.objects.count() == 0
    ranking_submit(assignment_id=second.pk, annotator=annotator2, choice="b", now=later)
    assert Ranking.objects.count() == 1


def test_skip_returns_slot_and_never_comes_back(annotator, annotator2):
    project = make_project("skip", overlap=1)
    make_comparison(project)
    a = assignment_lease_next(project=project, annotator=annotator)
    with pytest.raises(ValidationError):
        assignment_skip(assignment_id=a.pk, annotator=annotator, reason="")
    assignment_skip(assignment_id=a.pk, annotator=annotator, reason="unsure")
    assert Assignment.objects.get(pk=a.pk).skip_reason.startswith("Not sure")
    assert assignment_lease_next(project=project, annotator=annotator) is None
    assert assignment_lease_next(project=project, annotator=annotator2) is not None


def test_submission_validation_stores_nothing_on_error(annotator, annotator2):
    project = make_project("val", mode="ranking", k=3, allow_ties=False, overlap=2)
    comparison = make_comparison(project, k=3)
    foreign = make_comparison(project, k=3)
    a = assignment_lease_next(project=project, annotator=annotator)
    assert a.comparison_id == comparison.id
    ids = [str(i) for i in a.display_order]
    foreign_id = str(foreign.items.first().response_id)
    cases = [
        ({ids[0]: 1, ids[1]: 2}, "have none"),
        ({ids[0]: 1, ids[1]: 2, ids[2]: 3, foreign_id: 1}, "not part of this comparison"),
        ({ids[0]: 1, ids[1]: 1, ids[2]: 2}, "Ties are not allowed"),
        ({ids[0]: 1, ids[1]: 2, ids[2]: 4}, "out of range"),
        ({ids[0]: "x", ids[1]: 2, ids[2]: 3}, "not a whole number"),
    ]
    for ranks, message in cases:
        with pytest.raises(ValidationError, match=message):
            ranking_submit(assignment_id=a.pk, annotator=annotator, ranks=ranks)
    with pytest.raises(ValidationError, match="Unknown flag"):
        ranking_submit(
            assignment_id=a.pk, annotator=annotator, ranks={ids[0]: 1, ids[1]: 2, ids[2]: 3}, flags=["meh"]
        )
    with pytest.raises(ValidationError, match="Rank every response"):
        ranking_submit(assignment_id=a.pk, annotator=annotator, choice="a")
    with pytest.raises(PermissionDenied):
        ranking_submit(assignment_id=a.pk, annotator=annotator2, ranks={ids[0]: 1, ids[1]: 2, ids[2]: 3})
    assert Ranking.objects.count() == 0
    assert Assignment.objects.get(pk=a.pk).state == Assignment.State.LEASED

    ranking = ranking_submit(
        assignment_id=a.pk,
        annotator=annotator,
        ranks={ids[0]: 3, ids[1]: 1, ids[2]: 2},
        flags=["unsafe"],
        rationale=" ok ",
    )
    assert ranking.ranks == {ids[0]: 3, ids[1]: 1, ids[2]: 2}
    assert (
        ranking.flags == ["unsafe"] and ranking.rationale == "ok" and ranking.display_order == a.display_order
    )
    with pytest.raises(ValidationError, match="already submitted"):
        ranking_submit(assignment_id=a.pk, annotator=annotator, ranks={ids[0]: 3, ids[1]: 1, ids[2]: 2})


def test_ties_are_dense_and_pairwise_choices(annotator):
    project = make_project("ties", mode="ranking", k=4, allow_ties=True, overlap=1)
    make_comparison(project, k=4, priority=1)
    make_comparison(project, k=2)
    a = assignment_lease_next(project=project, annotator=annotator)
    ids = [str(i) for i in a.display_order]
    ranking = ranking_submit(
        assignment_id=a.pk, annotator=annotator, ranks={ids[0]: 1, ids[1]: 3, ids[2]: 3, ids[3]: 4}
    )
    assert ranking.ranks == {ids[0]: 1, ids[1]: 2, ids[2]: 2, ids[3]: 3}
    b = assignment_lease_next(project=project, annotator=annotator)
    left, right = (str(i) for i in b.display_order)
    ranking = ranking_submit(assignment_id=b.pk, annotator=annotator, choice="both_bad")
    assert ranking.ranks == {left: 1, right: 1} and ranking.both_bad


def test_pairwise_tie_refused_without_ties(annotator):
    project = make_project("noties", allow_ties=False, overlap=1)
    make_comparison(project)
    a = assignment_lease_next(project=project, annotator=annotator)
    with pytest.raises(ValidationError, match="Ties are not allowed"):
        ranking_submit(assignment_id=a.pk, annotator=annotator, choice="tie")
    left, right = (str(i) for i in a.display_order)
    assert ranking_submit(assignment_id=a.pk, annotator=annotator, choice="b").ranks == {left: 2, right: 1}


def test_undo_within_window_reopens_the_item(annotator):
    project = make_project("undo", overlap=1)
    comparison = make_comparison(project)
    now = timezone.now()
    a = assignment_lease_next(project=project, annotator=annotator, now=now)
    ranking_submit(assignment_id=a.pk, annotator=annotator, choice="a", now=now)
    comparison.refresh_from_db()
    assert comparison.status == Comparison.Status.COMPLETE
    again = ranking_undo_last(project=project, annotator=annotator)
    assert again.pk == a.pk and again.state == Assignment.State.LEASED
    comparison.refresh_from_db()
    assert comparison.status == Comparison.Status.OPEN and Ranking.objects.count() == 0
    ranking = ranking_submit(assignment_id=a.pk, annotator=annotator, choice="b")
    Ranking.objects.filter(pk=ranking.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    with pytest.raises(ValidationError, match="Nothing to undo"):
        ranking_undo_last(project=project, annotator=annotator)


def test_gold_mixed_in_at_the_ratio_and_scored(annotator):
    project = make_project("gold", overlap=1, gold_ratio=0.25)
    golds = [make_comparison(project, is_gold=True) for _ in range(2)]
    for _ in range(6):
        make_comparison(project)
    served = []
    for _ in range(8):
        a = assignment_lease_next(project=project, annotator=annotator)
        served.append(a.comparison.is_gold)
        # answer gold items: first correctly, the second one reversed
        left, right = (str(i) for i in a.display_order)
        expected = a.comparison.expected_ranks
        correct = "a" if expected and expected[left] < expected[right] else "b"
        wrong = "b" if correct == "a" else "a"
        choice = correct if not a.comparison.is_gold or a.comparison_id == golds[0].id else wrong
        ranking_submit(assignment_id=a.pk, annotator=annotator, choice=choice)
    # floor(0.25 × (n + 1)) gold items by the (n+1)-th: items 4 and 8 are gold.
    assert served == [False, False, False, True, False, False, False, True]
    stats = project_gold_stats(project=project)[annotator.pk]
    assert stats.items == 2 and stats.accuracy == pytest.approx(0.5) and stats.trust == pytest.approx(0.5)
    assert not gold_due(project=Project(gold_ratio=0.0), annotator_id=annotator.pk)


def test_review_queue_and_adjudication(annotator, annotator2, admin_user):
    project = make_project("adj", overlap=2)
    disputed = make_comparison(project, priority=1)
    agreed = make_comparison(project)
    for comparison_choice in [("a", "b"), ("a", "a")]:
        pair = []
        for user in (annotator, annotator2):
            pair.append(assignment_lease_next(project=project, annotator=user))
        # make both annotators judge the same underlying response as better or not
        first, second = pair
        better = str(first.display_order[0]) if comparison_choice[0] == "a" else str(first.display_order[1])
        for user, assignment, choice in (
            (annotator, first, comparison_choice[0]),
            (annotator2, second, comparison_choice[1]),
        ):
            shown_first = str(assignment.display_order[0])
            agrees = choice == comparison_choice[0]
            pick = "a" if (shown_first == better) == agrees else "b"
            ranking_submit(assignment_id=assignment.pk, annotator=user, choice=pick)
    queue = review_queue(project=project)
    assert [item.comparison.id for item in queue] == [disputed.id]
    assert queue[0].agreement == 0.0 and queue[0].rankings == 2
    response_ids = [str(i) for i in disputed.items.values_list("response_id", flat=True)]
    with pytest.raises(PermissionDenied):
        adjudication_record(
            comparison=disputed, adjudicator=annotator, ranks={response_ids[0]: 1, response_ids[1]: 2}
        )
    with pytest.raises(ValidationError):
        adjudication_record(comparison=disputed, adjudicator=admin_user, ranks={response_ids[0]: 1})
    adjudication_record(
        comparison=disputed,
        adjudicator=admin_user,
        ranks={response_ids[0]: 2, response_ids[1]: 1},
        note="B cites a source",
    )
    adjudication_record(
        comparison=disputed, adjudicator=admin_user, ranks={response_ids[0]: 1, response_ids[1]: 2}
    )
    final = Adjudication.objects.get(comparison=disputed)
    assert final.ranks == {response_ids[0]: 1, response_ids[1]: 2} and Adjudication.objects.count() == 1
    assert review_queue(project=project) == []
    assert [item.comparison.id for item in review_queue(project=project, include_adjudicated=True)] == [
        disputed.id
    ]
    assert agreed.id not in [
        item.comparison.id for item in review_queue(project=project, include_adjudicated=True)
    ]


def test_database_constraints_hold_the_invariants(project, annotator):
    comparison = make_comparison(project)
    a = assignment_lease_next(project=project, annotator=annotator)
    ranking_submit(assignment_id=a.pk, annotator=annotator, choice="a")
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(
            comparison=comparison,
            annotator=annotator,
            project=project,
            leased_at=timezone.now(),
            leased_until=timezone.now() + timedelta(seconds=60),
            display_order=a.display_order,
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        Comparison.objects.filter(pk=comparison.pk).update(k=9)
    with pytest.raises(IntegrityError), transaction.atomic():
        Comparison.objects.filter(pk=comparison.pk).update(is_gold=True, expected_ranks=None)
    with pytest.raises(IntegrityError), transaction.atomic():
        Project.objects.filter(pk=project.pk).update(k=3)  # pairwise projects compare two responses
    with pytest.raises(IntegrityError), transaction.atomic():
        Project.objects.filter(pk=project.pk).update(gold_ratio=1.5)
