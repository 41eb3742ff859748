"""The loop over the API, as its pages: admins start and watch sampling jobs; readers see the leaderboard."""

from __future__ import annotations

import pytest

from labeling.models import Prompt, Response
from labeling.services.leasing import assignment_lease_next
from labeling.services.projects import comparison_get_or_create
from labeling.services.rankings import ranking_submit
from loop.models import SamplingJob
from loop.selectors import leaderboard
from loop.services import sampling as sampling_services
from registry.models import ModelVersion
from tests.labeling.factories import make_project, make_user

pytestmark = pytest.mark.django_db

URL = "/api/v1/sampling-jobs/"


def _version(name: str, kind: str = "policy", **fields) -> ModelVersion:
    return ModelVersion.objects.create(
        name=name, kind=kind, artifact_path=f"models/{name}", sha256="0" * 64, **fields
    )


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """Sampling jobs whose task would be published (after the commit)."""
    queued: list[int] = []
    monkeypatch.setattr(
        sampling_services, "sampling_job_enqueue", lambda *, job, quiet=False: queued.append(job.pk)
    )
    return queued


def test_admin_starts_a_sampling_job_and_watches_it(clients, users, sent, django_capture_on_commit_callbacks):
    project = make_project("sampled")
    policy, reward = _version("policy"), _version("reward", kind="reward")
    with django_capture_on_commit_callbacks(execute=True):
        response = clients["admin"].post(
            URL,
            {
                "project": "sampled",
                "model_version": policy.pk,
                "reward_model": reward.pk,
                "limit": 3,
                "params": {"temperature": 0.2},
                "uncertain_share": 0.25,
            },
            format="json",
        )
    assert response.status_code == 201, response.json()
    body = response.json()
    job = SamplingJob.objects.get()
    assert sent == [job.pk] == [body["id"]]
    assert (job.project, job.model_version, job.reward_model, job.limit) == (project, policy, reward, 3)
    assert job.params == {**sampling_services.DEFAULT_PARAMS, "temperature": 0.2} == body["params"]
    assert body["status"] == "queued" and body["created_by"] == users["admin"].username
    assert body["uncertain_share"] == 0.25 and body["make_comparisons"] is True and body["pool"] == "new"
    SamplingJob.objects.filter(pk=job.pk).update(status="running", total=3, done=2)
    watched = clients["admin"].get(f"{URL}{job.pk}/").json()
    assert (watched["status"], watched["done"], watched["total"]) == ("running", 2, 3)
    listed = clients["admin"].get(f"{URL}?project=sampled&status=running").json()
    assert [j["id"] for j in listed["results"]] == [job.pk]
    assert clients["admin"].get(f"{URL}?status=failed").json()["count"] == 0


def test_bad_sampling_jobs_answer_400_per_field_and_nothing_is_created(clients, sent):
    make_project("sampled")
    policy, reward = _version("policy"), _version("reward", kind="reward")
    cases = [
        ({"model_version": reward.pk}, "model_version"),  # a reward model does not generate
        ({"model_version": policy.pk, "reward_model": policy.pk}, "reward_model"),
        ({"model_version": policy.pk, "params": {"temperature": "hot", "colour": 1}}, "params"),
        ({"model_version": policy.pk, "limit": 0}, "limit"),
        ({"model_version": policy.pk, "uncertain_share": 1.5}, "uncertain_share"),
        ({"model_version": policy.pk, "pool": "everything"}, "pool"),
        ({"model_version": 999999}, "model_version"),
        ({"model_version": policy.pk, "project": "missing"}, "project"),
    ]
    for payload, field in cases:
        response = clients["admin"].post(URL, {"project": "sampled", **payload}, format="json")
        assert response.status_code == 400, payload
        assert field in response.json(), (payload, response.json())
    params = (
        clients["admin"]
        .post(
            URL,
            {"project": "sampled", "model_version": policy.pk, "params": {"temperature": "hot", "colour": 1}},
            format="json",
        )
        .json()["params"]
    )
    assert any(message.startswith("temperature:") for message in params)
    assert any(message.startswith("colour: unknown generation parameter") for message in params)
    assert not SamplingJob.objects.exists() and sent == []


def test_the_leaderboard_is_the_pages_ratings(clients):
    project = make_project("board", overlap=1)
    base = _version("base")
    tuned = _version("tuned", parent=base, base=base)
    voter = make_user("voter")
    for n in range(6):
        prompt = Prompt.objects.create(
            project=project, external_id=f"q{n}", messages=[{"role": "user", "content": f"q{n}"}]
        )
        answers = [
            Response.objects.create(prompt=prompt, external_id=f"{v.name}", content=v.name, model_version=v)
            for v in (tuned, base)
        ]
        comparison_get_or_create(prompt=prompt, responses=answers)
    while (assignment := assignment_lease_next(project=project, annotator=voter)) is not None:
        by_source = {r.model_version_id: r.pk for r in assignment.comparison.responses.all()}
        tuned_wins = assignment.comparison.prompt.external_id != "q0"  # 5 of 6
        ranks = {
            str(by_source[tuned.pk]): 1 if tuned_wins else 2,
            str(by_source[base.pk]): 2 if tuned_wins else 1,
        }
        ranking_submit(assignment_id=assignment.pk, annotator=voter, ranks=ranks)

    body = clients["researcher"].get("/api/v1/leaderboard/board/").json()
    board = leaderboard(project=project)
    assert body["project"] == "board" and body["games"] == board.games == 6
    assert body["base"] == f"#{base.pk} base" and body["min_games"] == 20
    assert [row["model"] for row in body["rows"]] == [row.model for row in board.rows]
    first, expected = body["rows"][0], board.rows[0]
    assert first["model"] == f"#{tuned.pk} tuned" and first["preliminary"] and first["rank"] is None
    assert first["rating"]["elo"] == pytest.approx(expected.rating.elo)
    assert first["vs_base"] == {"win_rate": pytest.approx(5 / 6), "games": 6}
    assert {
        "model": f"#{tuned.pk} tuned",
        "opponent": f"#{base.pk} base",
        "win_rate": pytest.approx(5 / 6),
        "games": 6,
    } in body["win_rates"]
    assert clients["researcher"].get("/api/v1/leaderboard/nope/").status_code == 404
