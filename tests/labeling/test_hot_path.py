"""The annotator hot path (issue #17): query budgets of next / submit / the htmx submit, and the precompiled SQL
and hand-built payloads held equal to the ORM queries and DRF serializers they replace."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import URLResolver, get_resolver, resolve
from django.utils import timezone
from rest_framework.test import APIClient

from core import token_cache
from core.selectors import user_roles, user_roles_forget, user_with_roles_for_token
from core.services import api_token_get_or_create, user_create_or_update
from labeling.api.serializers import AssignmentSerializer, RankingSerializer, assignment_data, ranking_data
from labeling.models import Assignment, Comparison, Ranking, Response
from labeling.selectors.annotation import annotator_progress, assignment_responses
from labeling.services import leasing
from labeling.services.leasing import (
    _lease_regular,
    _lease_regular_in_database,
    _lock_next_candidate,
    _take,
    assignment_current,
    assignment_lease_next,
    project_with_current_lease,
    regular_candidates,
    slots_taken,
)
from labeling.services.rankings import (
    _locked_assignment,
    _submitted_in_database,
    _validated_ranking,
    assignment_skip,
    ranking_submit,
)
from tests.labeling.factories import make_comparison, make_project, make_user

pytestmark = pytest.mark.django_db

# Statements per request, transaction control (BEGIN / COMMIT / SAVEPOINT) not counted. On Postgres the submission
# is one statement (ranking, assignment, completion); elsewhere it is three.
WRITE = 1 if connection.vendor == "postgresql" else 3
# The token with its user and roles is asked once, then remembered for API_TOKEN_CACHE_SECONDS (core.token_cache).
TOKEN = 1
# project with my live lease, then on Postgres labeling_lease_regular() and the payload's read (no BEGIN/COMMIT),
# elsewhere the candidate (locked) with its responses and the slot upsert
NEXT_BUDGET = 3
SUBMIT_BUDGET = 1 + WRITE  # assignment+comparison+project (locked), the submission
# session, user, roles, project with the own assignment and any other live lease (project_with_own_assignment), the
# submission (elsewhere than Postgres also its locked read), the next lease (2), the page's progress with the undo
# button's ranking (annotator_workspace_state)
HTMX_SUBMIT_BUDGET = 7 + WRITE + (0 if connection.vendor == "postgresql" else 1)


def _statements(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]


def _api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_get_or_create(user=user).key}")
    return client


def test_next_and_submit_stay_within_their_query_budget():
    project = make_project("budget", overlap=1)
    for _ in range(5):
        make_comparison(project)
    client = _api(make_user("fast"))
    for i in range(3):  # the same budget for every item, not only the first
        with CaptureQueriesContext(connection) as leased:
            item = client.post("/api/v1/rankings/next/", {"project": "budget"}, format="json")
        assert item.status_code == 200
        assert len(_statements(leased)) == NEXT_BUDGET + (TOKEN if i == 0 else 0), _statements(leased)
        with CaptureQueriesContext(connection) as submitted:
            done = client.post(
                "/api/v1/rankings/submit/",
                {"assignment": item.json()["assignment"], "choice": "a"},
                format="json",
            )
        assert done.status_code == 201
        assert len(_statements(submitted)) == SUBMIT_BUDGET, _statements(submitted)
    assert Comparison.objects.filter(project=project, status=Comparison.Status.COMPLETE).count() == 3


def test_htmx_submit_and_next_item_stay_within_their_query_budget(client):
    project = make_project("budget-web", overlap=1)
    for _ in range(4):
        make_comparison(project)
    user = make_user("web-fast")
    client.force_login(user)
    page = client.get("/annotate/budget-web/").content.decode()
    assignment = page.split('data-assignment="')[1].split('"')[0]
    with CaptureQueriesContext(connection) as queries:
        response = client.post(
            f"/annotate/budget-web/items/{assignment}/submit/", {"choice": "b"}, HTTP_HX_REQUEST="true"
        )
    assert response.status_code == 200 and b"Saved." in response.content
    assert len(_statements(queries)) == HTMX_SUBMIT_BUDGET, _statements(queries)


def test_the_api_answers_with_what_its_serializers_describe_and_never_marks_gold():
    project = make_project("shape", overlap=1, gold_ratio=1.0)
    make_comparison(project, is_gold=True, text="A gold question?")
    user = make_user("shape-user")
    item = _api(user).post("/api/v1/rankings/next/", {"project": "shape"}, format="json").json()
    assert "is_gold" not in item
    assignment = Assignment.objects.select_related("comparison__prompt", "project").get(pk=item["assignment"])
    shown = assignment_responses(assignment=assignment)
    described = [
        {"id": x.response.id, "letter": x.letter, "position": x.position, "content": x.response.content}
        for x in shown
    ]
    assert item == AssignmentSerializer({"assignment": assignment, "responses": described}).data
    assert assignment_data(assignment, shown) == item
    ranking = ranking_submit(assignment_id=assignment.pk, annotator=user, choice="a", flags=["broken"])
    assert ranking_data(ranking) == RankingSerializer(ranking).data


def test_token_authentication_loads_the_roles_with_the_user_and_sees_a_role_change_next_request():
    user = make_user("switcher")
    client = _api(user)
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/v1/rankings/").status_code == 200
    assert not any("auth_group" in sql and "authtoken" not in sql for sql in _statements(queries))
    user_create_or_update(username="switcher", role="researcher")
    assert client.post("/api/v1/rankings/next/", {"project": "x"}, format="json").status_code == 403
    assert _api(user).get("/api/v1/comparisons/").status_code == 200
    assert APIClient(HTTP_AUTHORIZATION="Token not-a-token").get("/api/v1/rankings/").status_code == 401


def test_roles_are_asked_once_per_user_object():
    user = make_user("memo")
    with CaptureQueriesContext(connection) as queries:
        assert user_roles(user=user) == {"annotator"}
        assert user_roles(user=user) == {"annotator"}
    assert len(queries.captured_queries) == 1


@pytest.fixture
def busy_project():
    """Comparisons in every state the queue distinguishes, for one annotator (`me`) and two others."""
    project = make_project("states", overlap=2, gold_ratio=0.0)
    me, other, third = make_user("me"), make_user("other"), make_user("third")
    now = timezone.now()
    made = [make_comparison(project, priority=i % 3) for i in range(9)]
    make_comparison(project, is_gold=True)

    def assign(comparison, user, state, minutes=10):
        assignment = Assignment.objects.create(
            comparison=comparison,
            annotator=user,
            project=project,
            state=state,
            leased_at=now - timedelta(minutes=20),
            leased_until=now + timedelta(minutes=minutes),
            display_order=[],
            finished_at=None if state == Assignment.State.LEASED else now,
        )
        if state == Assignment.State.SUBMITTED:  # as ranking_submit leaves it
            Ranking.objects.create(comparison=comparison, annotator=user, assignment=assignment, ranks={})

    assign(made[0], other, Assignment.State.LEASED)  # one slot left
    assign(made[1], other, Assignment.State.LEASED)  # full: two live leases
    assign(made[1], third, Assignment.State.LEASED)
    assign(made[2], other, Assignment.State.LEASED, minutes=-5)  # expired: slot back
    assign(made[2], third, Assignment.State.LEASED)
    assign(made[3], me, Assignment.State.SUBMITTED)  # done by me
    assign(made[4], me, Assignment.State.SKIPPED)  # skipped by me
    assign(made[5], other, Assignment.State.SUBMITTED)  # one ranking, one slot left
    assign(made[6], me, Assignment.State.LEASED, minutes=-5)  # my expired lease: mine to revive
    Comparison.objects.filter(pk=made[7].pk).update(status=Comparison.Status.COMPLETE)
    return project, me, now


def test_the_project_comes_with_the_lease_the_queue_would_find(busy_project):
    project, me, now = busy_project
    for user in (me, *type(me).objects.filter(username__in=["other", "third"])):
        found, lease_id = project_with_current_lease(slug="states", annotator_id=user.pk, now=now)
        assert found == project and found.overlap == project.overlap
        current = assignment_current(project=project, annotator_id=user.pk, now=now)
        assert lease_id == (current.pk if current else None)
        assert (lease_id is None) == (user == me)
    assert project_with_current_lease(slug="no-such", annotator_id=me.pk, now=now) == (None, None)


def test_precompiled_candidates_follow_the_orm_queue(busy_project):
    project, me, now = busy_project
    expected = list(
        regular_candidates(project=project, annotator_id=me.pk, now=now).values_list("id", flat=True)
    )
    got: list[int] = []
    while found := _lock_next_candidate(
        project=project, annotator_id=me.pk, now=now, skip=got, skip_locked=True
    ):
        comparison, responses = found
        assert comparison.prompt.messages and comparison.status == Comparison.Status.OPEN
        assert [r.id for r in responses] == list(
            comparison.items.order_by("position").values_list("response_id", flat=True)
        )
        got.append(comparison.id)
    assert got == expected and len(expected) == 5  # made[0], [2], [5], [6], [8]
    assert annotator_progress(project=project, annotator=me, now=now).left == len(expected)


def test_taking_a_slot_recounts_it_and_revives_only_an_own_expired_lease(busy_project):
    project, me, now = busy_project
    for comparison in Comparison.objects.filter(project=project, is_gold=False):
        mine = Assignment.objects.filter(comparison=comparison, annotator=me).first()
        full = (
            slots_taken(comparison_id=comparison.id, now=now, exclude_annotator_id=me.pk) >= project.overlap
        )
        done = mine is not None and mine.state != Assignment.State.LEASED
        responses = list(Response.objects.filter(comparison_items__comparison=comparison))
        with transaction.atomic():
            taken = _take(
                comparison=comparison,
                responses=responses,
                project=project,
                annotator_id=me.pk,
                now=now,
                overlap=project.overlap,
            )
            assert (taken is None) == (full or done), comparison
            if taken is not None:
                stored = Assignment.objects.get(comparison=comparison, annotator=me)
                assert (stored.pk, stored.state, stored.leased_until) == (
                    taken.pk,
                    Assignment.State.LEASED,
                    now + timedelta(seconds=project.lease_seconds),
                )
                # A revived lease keeps the order its annotator saw; a new one shows every response once.
                if mine is not None:
                    assert stored.pk == mine.pk and taken.display_order == mine.display_order
                else:
                    assert sorted(taken.display_order) == sorted(r.id for r in responses)
            transaction.set_rollback(True)


def test_left_count_follows_leases_submissions_and_skips(busy_project):
    project, me, now = busy_project
    other = make_user("fourth")
    for _ in range(3):
        assignment = assignment_lease_next(project=project, annotator=other)
        assert annotator_progress(project=project, annotator=me, now=timezone.now()).left == (
            regular_candidates(project=project, annotator_id=me.pk, now=timezone.now()).count()
        )
        if assignment.pk % 2:
            ranking_submit(assignment_id=assignment.pk, annotator=other, choice="a")
        else:
            assignment_skip(assignment_id=assignment.pk, annotator=other, reason="unsure")
    revived = assignment_lease_next(project=project, annotator=me)
    assert revived is not None
    assert annotator_progress(project=project, annotator=me, now=timezone.now()).left == (
        regular_candidates(project=project, annotator_id=me.pk, now=timezone.now()).count()
    )


def test_progress_counts_the_rankings_of_today_and_in_all(busy_project):
    project, me, now = busy_project
    other, ranker = type(me).objects.get(username="other"), make_user("ranker")
    elsewhere = make_project("elsewhere", overlap=1)
    make_comparison(elsewhere)
    for where in (elsewhere, project, project):
        lease = assignment_lease_next(project=where, annotator=ranker, now=now)
        ranking_submit(assignment_id=lease.pk, annotator=ranker, choice="a", now=now)
    start_of_day = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    for user in (other, ranker):  # one of each annotator's rankings here was made yesterday
        old = Ranking.objects.filter(comparison__project=project, annotator=user).first()
        Ranking.objects.filter(pk=old.pk).update(created_at=start_of_day - timedelta(seconds=1))
    for user in (me, other, ranker, make_user("nobody-yet")):
        progress = annotator_progress(project=project, annotator=user, now=now)
        mine = Ranking.objects.filter(comparison__project=project, annotator=user)
        assert (progress.done_total, progress.done_today) == (
            mine.count(),
            mine.filter(created_at__gte=start_of_day).count(),
        )
        assert progress.left == regular_candidates(project=project, annotator_id=user.pk, now=now).count()
    ranked = annotator_progress(project=project, annotator=ranker, now=now)
    assert (ranked.done_today, ranked.done_total) == (1, 2)  # not the ranking in the other project


def test_the_last_ranking_is_undoable_within_the_window_until_adjudicated():
    from labeling.services.projects import adjudication_record
    from labeling.services.rankings import UNDO_WINDOW_SECONDS, ranking_undoable

    project = make_project("undoable", overlap=1)
    for _ in range(2):
        make_comparison(project)
    user = make_user("undoer")
    assert ranking_undoable(project=project, annotator=user) is None
    first = ranking_submit(
        assignment_id=assignment_lease_next(project=project, annotator=user).pk, annotator=user, choice="a"
    )
    last = ranking_submit(
        assignment_id=assignment_lease_next(project=project, annotator=user).pk, annotator=user, choice="b"
    )
    Ranking.objects.filter(pk=first.pk).update(created_at=last.created_at)  # a tie on time: the higher id
    found = ranking_undoable(project=project, annotator=user)
    assert found == last and found.ranks == last.ranks and found.assignment_id == last.assignment_id
    late = last.created_at + timedelta(seconds=UNDO_WINDOW_SECONDS + 1)
    assert ranking_undoable(project=project, annotator=user, now=late) is None
    assert ranking_undoable(project=make_project("other-project"), annotator=user) is None
    adjudication_record(
        comparison=last.comparison, adjudicator=make_user("adj", role="admin"), ranks=last.ranks
    )
    assert ranking_undoable(project=project, annotator=user) is None


_ANSWER_HEADERS = ("Content-Type", "Allow", "Vary", "Cache-Control", "X-Frame-Options", "WWW-Authenticate")


def test_the_fast_path_answers_as_drf_does(monkeypatch):
    """Each request once through labeling.api.hot_path and once through DRF's view (the fast path turned off):
    the same status, headers and body (a renewed lease differs only in `leased_until`)."""
    from labeling.api import hot_path

    project = make_project("twins", overlap=1, allow_ties=False)
    make_comparison(project)
    user, other = make_user("twin"), make_user("twin-other")
    client = _api(user)
    answered = []
    fast_answer = hot_path.answer

    def post(path, body, *, fast):
        with monkeypatch.context() as patched:
            if fast:
                patched.setattr(
                    hot_path, "answer", lambda *a: answered.append(fast_answer(*a)) or answered[-1]
                )
            else:
                patched.setattr(hot_path, "answer", lambda *a: None)
            response = client.post(path, body, format="json")
        headers = {name: response.get(name) for name in _ANSWER_HEADERS}
        return response.status_code, headers, response.json() if response.content else None

    def both(path, body, *, differ=()):
        fast, drf = post(path, body, fast=True), post(path, body, fast=False)
        assert answered.pop() is not None  # the fast path answered the first
        if differ:
            fast[2].pop(differ), drf[2].pop(differ)
        assert fast == drf
        return fast

    status, _, lease = both("/api/v1/rankings/next/", {"project": "twins"}, differ="leased_until")
    assert status == 200
    assignment = lease["assignment"]
    assert both("/api/v1/rankings/next/", {"project": "nope"})[:1] == (404,)
    assert both("/api/v1/rankings/submit/", {"assignment": assignment, "choice": "tie"})[0] == 400
    assert both("/api/v1/rankings/submit/", {"assignment": assignment, "ranks": {"1": 1}})[0] == 400
    theirs = make_project("theirs")
    make_comparison(theirs)
    foreign = assignment_lease_next(project=theirs, annotator=other)
    assert both("/api/v1/rankings/submit/", {"assignment": foreign.pk, "choice": "a"})[0] == 403
    assert both("/api/v1/rankings/submit/", {"assignment": 10**12, "choice": "a"})[0] == 403
    status, headers, ranking = post(
        "/api/v1/rankings/submit/", {"assignment": assignment, "choice": "a"}, fast=True
    )
    assert answered.pop() is not None and status == 201
    assert ranking == ranking_data(
        Ranking.objects.select_related("comparison__project").get(pk=ranking["id"])
    )
    assert headers == post("/api/v1/rankings/submit/", {"assignment": assignment}, fast=False)[1] | {
        "Content-Type": "application/json"
    }
    assert both("/api/v1/rankings/submit/", {"assignment": assignment, "choice": "b"})[0] == 400  # already
    status, headers, body = both("/api/v1/rankings/next/", {"project": "twins"})  # nothing left
    assert (status, headers["Content-Type"], body) == (204, None, None)
    assert headers["Cache-Control"] == "private, no-store" and headers["Allow"] == "POST, OPTIONS"


@pytest.mark.parametrize(
    "body",
    [
        {"project": " twins"},  # DRF strips it
        {"project": 5},
        {"assignment": "7", "choice": "a"},
        {"assignment": True, "choice": "a"},
        {"assignment": 7, "flags": ["unsafe "]},
        {"assignment": 7, "ranks": {"1": None}},
        {"assignment": 7, "rationale": None},
        ["not", "an", "object"],
    ],
)
def test_requests_the_fast_path_would_have_to_reinterpret_go_to_drf(body):
    from django.test import RequestFactory

    from labeling.api import hot_path

    user = make_user("plain")
    token = api_token_get_or_create(user=user).key
    action = "next" if "project" in body else "submit"
    request = RequestFactory().post(
        f"/api/v1/rankings/{action}/",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token}",
    )
    assert hot_path.answer(request, action, None) is None
    plain = {"project": "x"} if action == "next" else {"assignment": 7, "choice": "a"}
    request = RequestFactory().post(
        f"/api/v1/rankings/{action}/",
        plain,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token}",
    )
    assert hot_path.answer(request, action, None) is not None


def _token_queries(queries) -> int:
    return sum('"authtoken_token"' in sql for sql in _statements(queries))


def test_a_token_is_asked_once_then_remembered_until_it_changes_or_expires(settings, monkeypatch):
    project = make_project("remember", overlap=1)
    make_comparison(project)
    user = make_user("remembered")
    client = _api(user)

    def rankings(expected_status=200):
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/api/v1/rankings/").status_code == expected_status
        return _token_queries(queries)

    assert rankings() == 1
    assert rankings() == 0
    # Deleting the token (a sign-out, a rotation) forgets it at once: refused on the next request.
    api_token_get_or_create(user=user).delete()
    assert rankings(expected_status=401) == 1
    # A new token; deactivating its user (a save) forgets it too.
    client = _api(user)
    assert rankings() == 1
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert rankings(expected_status=401) == 1
    user.is_active = True
    user.save(update_fields=["is_active"])
    assert rankings() == 1
    # What no signal reports (QuerySet.update, another process) counts once the entry expires.
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    assert rankings() == 0  # still remembered: at most API_TOKEN_CACHE_SECONDS stale
    later = time.monotonic() + settings.API_TOKEN_CACHE_SECONDS + 1
    monkeypatch.setattr(token_cache.time, "monotonic", lambda: later)
    assert rankings(expected_status=401) == 1


def test_a_remembered_token_gives_each_request_its_own_user(settings):
    user = make_user("own-object")
    key = api_token_get_or_create(user=user).key
    first, _ = user_with_roles_for_token(key=key)
    second, _ = user_with_roles_for_token(key=key)
    assert first is not second and first == second == user
    first.first_name = "changed"
    user_roles_forget(user=first)
    assert second.first_name == "" and user_roles(user=second) == {"annotator"}
    settings.API_TOKEN_CACHE_SECONDS = 0
    token_cache.forget_all()
    with CaptureQueriesContext(connection) as queries:
        user_with_roles_for_token(key=key)
        user_with_roles_for_token(key=key)
    assert len(queries.captured_queries) == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="cuts a Postgres backend: run under test-services"
)
def test_a_persistent_connection_cut_between_requests_is_replaced_without_an_error():
    """The hot path skips CONN_HEALTH_CHECKS' SELECT 1; a dead connection is found by the first statement."""
    import psycopg

    project = make_project("cut", overlap=1)
    for _ in range(3):
        make_comparison(project)
    client = _api(make_user("cut-user"))
    assert connection.settings_dict["CONN_HEALTH_CHECKS"] and connection.settings_dict["CONN_MAX_AGE"]

    def cut():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        with psycopg.connect(**params, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [backend])

    for cached_token in (False, True):  # the first statement is the token query, then the project query
        if not cached_token:
            token_cache.forget_all()
        item = client.post("/api/v1/rankings/next/", {"project": "cut"}, format="json")
        assert item.status_code == 200
        cut()
        if not cached_token:
            token_cache.forget_all()
        # What the WSGI handler does at request_started (the test client leaves it out): from here on the
        # connection counts as not checked, so Django would send its SELECT 1.
        close_old_connections()
        assert not connection.health_check_done
        again = client.post("/api/v1/rankings/next/", {"project": "cut"}, format="json")
        assert again.status_code == 200, again.content
        assert again.json()["assignment"] == item.json()["assignment"]  # the same live lease, renewed
        done = client.post(
            "/api/v1/rankings/submit/",
            {"assignment": item.json()["assignment"], "choice": "a"},
            format="json",
        )
        assert done.status_code == 201
    assert Ranking.objects.filter(comparison__project=project).count() == 2
    # A request the hot path leaves to DRF (a slug with a space, which DRF strips) gets Django's own check.
    cut()
    close_old_connections()
    assert client.post("/api/v1/rankings/next/", {"project": " cut"}, format="json").status_code == 200


def test_no_page_pattern_could_take_an_api_path_so_the_api_can_be_tried_first():
    """feedback_app.urls lists the API first; that changes nothing only while no other pattern matches api/…."""

    def routes(patterns, prefix=""):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                if pattern.app_name != "api":
                    yield from routes(pattern.url_patterns, route)
            else:
                yield route

    found = list(routes(get_resolver().url_patterns))
    assert len(found) > 50  # the walk reaches the pages
    # A route starting with a converter or a regex could match anything; none may start with api/.
    assert [route for route in found if route.startswith(("<", "^", "api"))] == []
    assert resolve("/api/v1/rankings/next/").namespace == "api"


_LANE = "core.fast_lane.FastLaneMiddleware"


@pytest.fixture
def production_headers(settings):
    """The header settings of DEBUG=0 (HTTPS, HSTS), so that the comparison below covers those headers too."""
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_CONTENT_TYPE_NOSNIFF = True
    settings.SECURE_REFERRER_POLICY = "same-origin"
    settings.X_FRAME_OPTIONS = "DENY"
    return settings


def test_the_fast_lane_answers_header_for_header_as_the_whole_middleware_stack(
    production_headers, monkeypatch
):
    """Each request once through core.fast_lane's shorter stack and once through every middleware (the lane taken
    out of MIDDLEWARE): the same status, every header, the same body (a renewed lease differs in `leased_until`,
    two submissions in their ids)."""
    from django.db import OperationalError

    from core import fast_lane
    from labeling.api import hot_path

    settings = production_headers
    with_lane = list(settings.MIDDLEWARE)
    assert with_lane[0] == _LANE
    lane_requests = []
    resolve_request = fast_lane._Lane.resolve_request

    def spied(self, request):
        lane_requests.append(request)
        return resolve_request(self, request)

    monkeypatch.setattr(fast_lane._Lane, "resolve_request", spied)
    project = make_project("lane", overlap=1, allow_ties=False)
    for _ in range(2):
        make_comparison(project)
    user, other = make_user("lane-user"), make_user("lane-other")
    make_user("lane-researcher", role="researcher")
    tokens = {
        "user": api_token_get_or_create(user=user).key,
        "other": api_token_get_or_create(user=other).key,
        "researcher": api_token_get_or_create(user=type(user).objects.get(username="lane-researcher")).key,
        "bad": "not-a-token",
    }

    def post(path, body, *, lane, token="user", viewed=True, **extra):
        settings.MIDDLEWARE = with_lane if lane else with_lane[1:]
        client = APIClient(HTTP_AUTHORIZATION=f"Token {tokens[token]}")
        before = len(lane_requests)
        response = client.post(f"/api/v1/rankings/{path}/", body, format="json", secure=True, **extra)
        assert len(lane_requests) - before == (1 if lane and viewed else 0)
        if lane and viewed:
            assert not hasattr(lane_requests[-1], "session")  # the skipped middleware did not run
        is_json = response.content and response["Content-Type"] == "application/json"
        body = response.json() if is_json else response.content
        return response.status_code, dict(response.headers), body

    def both(path, body, *, differ=(), viewed=True, **kwargs):
        fast = post(path, body, lane=True, viewed=viewed, **kwargs)
        full = post(path, body, lane=False, **kwargs)
        for key in differ:
            fast[2].pop(key), full[2].pop(key)
        assert fast == full
        return fast

    status, headers, lease = both("next", {"project": "lane"}, differ=["leased_until"])
    assert status == 200
    assert {
        "Strict-Transport-Security",
        "X-Frame-Options",
        "Content-Security-Policy",
        "Content-Length",
    } <= set(headers)
    assert headers["Cache-Control"] == "private, no-store" and headers["X-Content-Type-Options"] == "nosniff"
    assert both("next", {"project": "nope"})[0] == 404
    assert (
        both("next", {"project": " lane"}, differ=["leased_until"])[0] == 200
    )  # DRF's own view, in the lane
    assert both("next", {"project": "lane"}, token="bad")[0] == 401
    assert both("next", {"project": "lane"}, token="researcher")[0] == 403
    assert both("submit", {"assignment": lease["assignment"], "choice": "tie"})[0] == 400
    assert both("submit", {"assignment": lease["assignment"], "choice": "a"}, token="other")[0] == 403
    # ALLOWED_HOSTS still applies (CommonMiddleware refuses the request before any view).
    assert both("next", {"project": "lane"}, HTTP_HOST="evil.example", viewed=False)[0] == 400

    def outage(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    with monkeypatch.context() as patched:
        patched.setitem(hot_path._ACTIONS, "next", (outage, hot_path._next_arguments))
        status, headers, _ = both("next", {"project": "lane"})
    assert status == 503 and headers["Retry-After"]
    # Two submissions (one per stack, each of its own lease): the same answer but for the ids and times.
    second = post("next", {"project": "lane"}, lane=False, token="other")[2]
    fast = post("submit", {"assignment": lease["assignment"], "choice": "a"}, lane=True)
    full = post("submit", {"assignment": second["assignment"], "choice": "b"}, lane=False, token="other")
    assert fast[0] == full[0] == 201
    assert int(fast[1].pop("Content-Length")) == len(json.dumps(fast[2], separators=(",", ":")).encode())
    full[1].pop("Content-Length")
    assert fast[1] == full[1]  # the ids in the bodies may differ in length
    assert set(fast[2]) == set(full[2])
    assert both("next", {"project": "lane"})[:2] == both("next", {"project": "lane"}, token="other")[:2]
    assert both("next", {"project": "lane"})[0] == 204


def test_the_fast_lane_takes_only_token_posts_to_its_endpoints(client):
    from core.fast_lane import FastLaneMiddleware

    seen = []
    lane = FastLaneMiddleware(lambda request: seen.append(request.path) or "whole stack")
    lane._built()._middleware_chain = lambda request: "lane"
    from django.test import RequestFactory

    factory = RequestFactory()
    auth = {"HTTP_AUTHORIZATION": "Token abc"}
    assert lane(factory.post("/api/v1/rankings/next/", **auth)) == "lane"
    assert lane(factory.post("/api/v1/rankings/submit/", HTTP_AUTHORIZATION="token abc")) == "lane"
    assert lane(factory.post("/api/v1/rankings/next/")) == "whole stack"  # a session user: CSRF, session
    assert lane(factory.post("/api/v1/rankings/next/", HTTP_AUTHORIZATION="Bearer abc")) == "whole stack"
    assert lane(factory.get("/api/v1/rankings/next/", **auth)) == "whole stack"
    assert lane(factory.post("/api/v1/rankings/skip/", **auth)) == "whole stack"


def test_the_fast_lane_refuses_a_configuration_it_cannot_keep_equal(settings):
    from django.core.exceptions import ImproperlyConfigured

    from core.fast_lane import FastLaneMiddleware

    settings.MIDDLEWARE = [*settings.MIDDLEWARE[1:], _LANE]
    with pytest.raises(ImproperlyConfigured, match="first"):
        FastLaneMiddleware(lambda request: None)
    settings.MIDDLEWARE = [_LANE, *settings.MIDDLEWARE[:-1]]
    settings.FAST_LANE_SKIPS = [*settings.FAST_LANE_SKIPS, "no.such.Middleware"]
    with pytest.raises(ImproperlyConfigured, match="no.such.Middleware"):
        FastLaneMiddleware(lambda request: None)


def test_the_project_comes_with_the_own_assignment_only_in_its_project_and_by_its_annotator():
    from labeling.selectors.annotation import project_for_slug, project_with_own_assignment

    project, other_project = make_project("own"), make_project("not-own")
    make_comparison(project)
    user, other = make_user("owner"), make_user("not-owner")
    lease = assignment_lease_next(project=project, annotator=user)
    now = timezone.now()
    found_project, found, other_lease = project_with_own_assignment(
        slug="own", assignment_id=lease.pk, annotator=user, now=now
    )
    assert found_project == project_for_slug(slug="own") == project
    assert (found_project.overlap, found_project.mode, found_project.lease_seconds) == (
        project.overlap,
        project.mode,
        project.lease_seconds,
    )
    assert found == Assignment.objects.get(pk=lease.pk) and other_lease is None
    assert (found.display_order, found.state, found.leased_until) == (
        lease.display_order,
        lease.state,
        lease.leased_until,
    )
    assert found.comparison == lease.comparison and found.comparison.k == lease.comparison.k
    assert found.project is found_project and found.comparison.project is found_project

    def asked(slug, assignment_id, annotator):
        return tuple(
            project_with_own_assignment(slug=slug, assignment_id=assignment_id, annotator=annotator, now=now)
        )

    assert asked("not-own", lease.pk, user) == (other_project, None, None)
    assert asked("own", lease.pk, other) == (project, None, None)
    assert asked("own", 2**63, user) == (project, None, None)
    assert asked("no-such", lease.pk, user) == (None, None, None)


def test_the_other_live_lease_is_the_one_the_next_lease_would_look_up():
    from labeling.selectors.annotation import project_with_own_assignment

    project = make_project("two-tabs", overlap=1, lease_seconds=600)
    for _ in range(4):
        make_comparison(project)
    user = make_user("two-tabs")
    first = assignment_lease_next(project=project, annotator=user)
    # a second live lease, as another tab can hold: the older one stays the current one
    second = Assignment.objects.create(
        comparison=Comparison.objects.filter(project=project).exclude(pk=first.comparison_id).first(),
        annotator=user,
        project=project,
        leased_at=first.leased_at + timedelta(seconds=1),
        leased_until=first.leased_until + timedelta(seconds=1),
        display_order=first.display_order,
    )
    for mine, other in ((first, second), (second, first)):
        now = timezone.now()
        own = project_with_own_assignment(slug="two-tabs", assignment_id=mine.pk, annotator=user, now=now)
        assert own.assignment == mine and own.other_lease_id == other.pk
    now = timezone.now()
    own = project_with_own_assignment(slug="two-tabs", assignment_id=first.pk, annotator=user, now=now)
    ranking_submit(assignment_id=first.pk, annotator=user, choice="a", assignment_read=own.assignment)
    assert leasing._current_lease_id(project=project, annotator_id=user.pk, now=now) == own.other_lease_id
    later = second.leased_until + timedelta(seconds=1)  # expired: no other live lease then
    assert (
        project_with_own_assignment(
            slug="two-tabs", assignment_id=first.pk, annotator=user, now=later
        ).other_lease_id
        is None
    )


def _workspace_state_as_separate_questions(project, user, now):
    from labeling.services.rankings import ranking_undoable

    return (
        annotator_progress(project=project, annotator=user, now=now),
        ranking_undoable(project=project, annotator=user, now=now),
    )


def test_the_workspace_state_is_the_progress_and_the_undoable_ranking(busy_project):
    from labeling.selectors.annotation import annotator_workspace_state
    from labeling.services.projects import adjudication_record
    from labeling.services.rankings import UNDO_WINDOW_SECONDS, ranking_undo_last

    project, me, now = busy_project
    elsewhere = make_project("state-elsewhere", overlap=1)
    make_comparison(elsewhere)
    users = [me, type(me).objects.get(username="other"), make_user("state-new")]

    def check(label):
        for user in users:
            for at in (timezone.now(), timezone.now() + timedelta(seconds=UNDO_WINDOW_SECONDS + 1)):
                state = annotator_workspace_state(project=project, annotator=user, now=at)
                progress, undoable = _workspace_state_as_separate_questions(project, user, at)
                assert state.progress == progress, (label, user.username)
                assert state.undoable == undoable, (label, user.username)
                if undoable is not None:
                    assert (
                        state.undoable.ranks,
                        state.undoable.assignment_id,
                        state.undoable.created_at,
                    ) == (
                        undoable.ranks,
                        undoable.assignment_id,
                        undoable.created_at,
                    )

    check("start")
    lease = assignment_lease_next(project=elsewhere, annotator=me)
    ranking_submit(assignment_id=lease.pk, annotator=me, choice="a")  # the newest ranking, in another project
    check("elsewhere")
    for choice in ("a", "b"):
        lease = assignment_lease_next(project=project, annotator=me)
        last = ranking_submit(assignment_id=lease.pk, annotator=me, choice=choice)
    state = annotator_workspace_state(project=project, annotator=me)
    assert state.undoable == last and state.progress.done_total >= 2
    check("two submitted")
    ranking_undo_last(project=project, annotator=me)
    check("undone")
    assignment_skip(
        assignment_id=assignment_lease_next(project=project, annotator=me).pk, annotator=me, reason="unsure"
    )
    check("skipped")
    mine = Ranking.objects.filter(comparison__project=project, annotator=me).order_by("-created_at", "-id")[0]
    adjudication_record(
        comparison=mine.comparison, adjudicator=make_user("state-adj", role="admin"), ranks=mine.ranks
    )
    assert annotator_workspace_state(project=project, annotator=me).undoable is None
    check("adjudicated")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="labeling_lease_regular() is Postgres only")
def test_the_lease_function_takes_what_the_python_lease_takes(busy_project):
    """Through the busy project's queue (a slot left, full, expired, done, skipped, mine to revive, complete):
    each next lease of the function and of the Python transaction is the same comparison, the same row (a revived
    lease keeps its id and order) and the same lease, until both find nothing."""
    project, me, now = busy_project
    leased = []
    while True:
        with transaction.atomic():
            expected = _lease_regular(project=project, annotator_id=me.pk, now=now)
            expected = expected and (expected.comparison_id, expected.pk, expected.display_order)
            transaction.set_rollback(True)
        taken = _lease_regular_in_database(project=project, annotator_id=me.pk, now=now)
        if expected is None:
            assert taken is None
            break
        revived = Assignment.objects.filter(pk=expected[1]).exists()
        assert taken.comparison_id == expected[0]
        assert (taken.pk == expected[1]) == revived  # a new row's id differs (the sequence moved on)
        if revived:
            assert taken.display_order == expected[2]
        stored = Assignment.objects.get(pk=taken.pk)
        assert (stored.comparison_id, stored.annotator_id, stored.state, stored.leased_until) == (
            taken.comparison_id,
            me.pk,
            Assignment.State.LEASED,
            now + timedelta(seconds=project.lease_seconds),
        )
        assert stored.display_order == taken.display_order and stored.leased_at == now
        shown = [item.response.id for item in assignment_responses(assignment=taken)]
        assert shown == taken.display_order
        if not revived:  # a new lease shows every response once
            assert sorted(shown) == sorted(taken.comparison.items.values_list("response_id", flat=True))
        assert taken.comparison.prompt.messages and taken.project == project
        # Done with it, on to the next (the fixture's revived lease has no display order to rank or clean).
        Assignment.objects.filter(pk=taken.pk).update(state=Assignment.State.SKIPPED, finished_at=now)
        leased.append(taken.comparison_id)
    assert len(leased) == 5 and len(set(leased)) == 5  # made[0], [2], [5], [6], [8], as the queue test says


@pytest.mark.django_db(transaction=True)
def test_a_lease_takes_the_function_on_postgres_and_the_python_path_elsewhere(settings, monkeypatch):
    """Which path assignment_lease_next takes, and that the function's lease runs outside a transaction (no
    BEGIN / COMMIT round trips) while the Python path holds its row lock in one."""
    project = make_project("paths", overlap=1)
    make_comparison(project)
    make_comparison(project)
    calls = []
    monkeypatch.setattr(leasing, "_lease_regular", _recorded(calls, "python", leasing._lease_regular))
    monkeypatch.setattr(
        leasing,
        "_lease_regular_in_database",
        _recorded(calls, "function", leasing._lease_regular_in_database),
    )
    settings.DB_HOT_PATH_FUNCTIONS = True
    first = assignment_lease_next(project=project, annotator=make_user("p1"))
    settings.DB_HOT_PATH_FUNCTIONS = False
    second = assignment_lease_next(project=project, annotator=make_user("p2"))
    on_postgres = connection.vendor == "postgresql"
    assert calls == ([("function", False), ("python", True)] if on_postgres else [("python", True)] * 2)
    assert {first.comparison_id, second.comparison_id} == set(
        Comparison.objects.filter(project=project).values_list("id", flat=True)
    )


def _recorded(calls, name, function):
    def run(**kwargs):
        calls.append((name, connection.in_atomic_block))
        return function(**kwargs)

    return run


@pytest.mark.skipif(connection.vendor != "postgresql", reason="labeling_submit() is Postgres only")
def test_the_submit_function_writes_what_the_transaction_writes(settings):
    """The same submissions through labeling_submit() and through the locked transaction store the same ranking,
    close the assignment the same way and complete the comparison at the same ranking (overlap 2)."""
    stored = {}
    for in_database in (True, False):
        settings.DB_HOT_PATH_FUNCTIONS = in_database
        project = make_project(f"submit-{in_database}", overlap=2)
        comparison = make_comparison(project)
        now = timezone.now()
        rows = []
        for user in [make_user(f"s{in_database}{i}") for i in range(2)]:
            assignment = assignment_lease_next(project=project, annotator=user, now=now)
            ranking = ranking_submit(
                assignment_id=assignment.pk,
                annotator=user,
                choice="b",
                flags=["unsafe", "broken"],
                rationale=" why ",
                now=now + timedelta(seconds=7),
            )
            saved = Ranking.objects.get(pk=ranking.pk)
            closed = Assignment.objects.get(pk=assignment.pk)
            assert ranking_data(ranking) == ranking_data(saved)
            assert saved.display_order == closed.display_order
            assert saved.ranks == {str(closed.display_order[0]): 2, str(closed.display_order[1]): 1}
            rows.append(
                (
                    saved.both_bad,
                    saved.flags,
                    saved.rationale,
                    saved.seconds_spent,
                    saved.created_at >= now,
                    closed.state,
                    closed.finished_at - now,
                    Comparison.objects.get(pk=comparison.pk).status,
                    ranking.comparison.status,
                )
            )
        stored[in_database] = rows
    assert stored[True] == stored[False]
    assert [row[-1] for row in stored[True]] == [Comparison.Status.OPEN, Comparison.Status.COMPLETE]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="labeling_submit() is Postgres only")
def test_a_submission_the_function_cannot_confirm_is_decided_under_the_transactions_lock():
    """labeling_submit() writes nothing for an expired lease or one that changed after the unlocked read; the
    transaction then accepts an expired lease whose slot is still free and refuses one whose slot was taken."""
    project = make_project("stale", overlap=1)
    comparison = make_comparison(project)
    me, other = make_user("stale-me"), make_user("stale-other")
    now = timezone.now()
    assignment = assignment_lease_next(project=project, annotator=me, now=now)
    later = now + timedelta(seconds=project.lease_seconds + 1)  # the lease expired
    read = _locked_assignment(assignment_id=assignment.pk, annotator=me, lock=False)
    ranking = _validated_ranking(
        assignment=read, annotator=me, choice="a", ranks=None, flags=[], rationale="", now=later
    )
    assert not _submitted_in_database(ranking=ranking, assignment=read, now=later)
    read.leased_at -= timedelta(seconds=1)  # as if an undo had leased it again since the read
    assert not _submitted_in_database(ranking=ranking, assignment=read, now=now)
    assert not Ranking.objects.exists()
    assert Assignment.objects.get(pk=assignment.pk).state == Assignment.State.LEASED
    # Expired but nobody took the slot: accepted (by the transaction).
    done = ranking_submit(assignment_id=assignment.pk, annotator=me, choice="a", now=later)
    assert Ranking.objects.get().pk == done.pk
    assert Comparison.objects.get(pk=comparison.pk).status == Comparison.Status.COMPLETE
    # Expired and the slot went to another annotator: refused, nothing written.
    second = make_comparison(project)
    mine = assignment_lease_next(project=project, annotator=me, now=now)
    assert mine.comparison_id == second.pk
    theirs = assignment_lease_next(project=project, annotator=other, now=later)
    assert theirs.comparison_id == second.pk
    with pytest.raises(ValidationError, match="ran out"):
        ranking_submit(assignment_id=mine.pk, annotator=me, choice="a", now=later)
    assert Ranking.objects.count() == 1
