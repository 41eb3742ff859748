"""Training pages through Django's test client: permissions, launch form errors per field, live partials."""

import json
import re

import pytest
from django.core.management import CommandError, call_command

from registry.models import ModelVersion
from tests.training.factories import make_user, ranked_project, register_tiny_base
from training.models import StageRun, TrainingRun
from training.services import runs as run_services

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(tiny_model_dir):
    project = ranked_project(prompts=6)
    base = register_tiny_base(tiny_model_dir)
    users = {role: make_user(f"{role}-user", role) for role in ("admin", "researcher", "annotator")}
    return project, base, users


def _client(client, user):
    client.force_login(user)
    return client


READ_PAGES = ["/training/runs/", "/models/"]


@pytest.mark.parametrize(
    "role, read, launch", [("admin", 200, 200), ("researcher", 200, 403), ("annotator", 403, 403)]
)
def test_permissions_by_role(client, world, role, read, launch):
    _, base, users = world
    _client(client, users[role])
    for url in [*READ_PAGES, f"/models/{base.pk}/"]:
        assert client.get(url).status_code == read, url
    assert client.get("/training/launch/").status_code == launch
    # An empty form: the admin gets it back with its errors (422), the others may not post at all.
    assert client.post("/training/launch/", {}).status_code == (422 if launch == 200 else launch)


def test_anonymous_is_sent_to_login(client, world):
    for url in [*READ_PAGES, "/training/launch/"]:
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def _form(project, **overrides):
    data = {
        "project": project.slug, "preset": "sft", "peft_sft": "full", "peft_reward": "full", "peft_ppo": "lora",
        "peft_contrastive": "lora", "max_steps": "2", "exclude_flagged": "on",
    }  # fmt: skip
    data.update(overrides)
    return data


def test_launch_form_shows_errors_per_field_and_enqueues_nothing(
    client, world, enqueued_stages, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        project, _, users = world
        _client(client, users["admin"])
        response = client.post("/training/launch/", _form(project, preset="rlhf", peft_reward="bogus"))
        assert response.status_code == 422
        assert "peft_reward" in response.context["form"].errors
        response = client.post(
            "/training/launch/",
            _form(project, preset="rlhf", advanced='{"ppo": {"clip_range": "wide", "oops": 1}}'),
        )
        assert response.status_code == 422
        form = response.context["form"]
        assert b"PPO clip range must be a number (ppo.clip_range)" in response.content
        assert any("ppo.clip_range" in error for error in form.errors["advanced"])
        assert any("ppo.oops" in error for error in form.errors["advanced"])
        assert TrainingRun.objects.count() == 0

        response = client.post("/training/launch/", _form(project, advanced="{not json"))
        assert response.status_code == 422
        assert "Not valid JSON" in response.context["form"].errors["advanced"][0]

        response = client.post("/training/launch/", _form(project, max_steps="0"))
        assert response.status_code == 422 and "max_steps" in response.context["form"].errors
        assert TrainingRun.objects.count() == 0
    assert enqueued_stages == []  # nothing was sent, not even once committed


def test_launch_creates_run_enqueues_first_stage_and_redirects(
    client, world, enqueued_stages, django_capture_on_commit_callbacks
):
    project, base, users = world
    _client(client, users["admin"])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/training/launch/",
            _form(project, preset="preference", advanced='{"contrastive": {"beta": 0.2}}'),
        )
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/training/runs/{run.pk}/"
    assert run.created_by == users["admin"] and run.base_model == base
    assert [s.kind for s in run.stages.all()] == ["sft", "contrastive"]
    assert run.config["contrastive"]["beta"] == 0.2 and run.config["sft"]["max_steps"] == 2
    assert run.stages.get(kind="contrastive").peft == "lora"
    assert run.sample_after is None  # the box was not ticked
    assert enqueued_stages == [run.stages.get(position=0).pk]
    client.post("/training/launch/", _form(project, sample_after="on"))
    assert TrainingRun.objects.order_by("-id").first().sample_after == {}


def test_live_count_partial(client, world):
    project, _, users = world
    _client(client, users["admin"])
    response = client.get(
        "/training/launch/count/", {"project": project.slug, "preset": "reward"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert b'data-format="pairwise">6<' in response.content
    response = client.get(
        "/training/launch/count/", {"project": project.slug, "preset": "reward", "adjudicated_only": "on"}
    )
    assert b'data-format="pairwise">0<' in response.content


def test_run_page_live_partial_and_htmx_cancel(client, world, enqueued_stages):
    project, _, users = world
    run = run_services.training_run_launch(
        project=project, preset="rlhf", stage_configs={"sft": {"max_steps": 5}}
    )
    stage = run.stages.get(position=0)
    StageRun.objects.filter(pk=stage.pk).update(
        status="running",
        step=2,
        metrics=[{"step": 1, "values": {"loss": 2.0}}, {"step": 2, "values": {"loss": 1.5}}],
    )
    _client(client, users["researcher"])
    page = client.get(f"/training/runs/{run.pk}/")
    assert page.status_code == 200
    assert b"step 2 / 5" in page.content
    assert b'hx-trigger="every 2s"' in page.content
    assert b"Cancel run" not in page.content  # researchers watch, admins act
    live = client.get(f"/training/runs/{run.pk}/live/", HTTP_HX_REQUEST="true")
    assert b"<html" not in live.content and b'id="curves-%d"' % stage.pk in live.content
    assert client.post(f"/training/runs/{run.pk}/cancel/").status_code == 403

    _client(client, users["admin"])
    response = client.post(f"/training/runs/{run.pk}/cancel/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and b"cancelling after the current step" in response.content
    run.refresh_from_db()
    assert run.cancel_requested
    assert list(run.stages.exclude(position=0).values_list("status", flat=True)) == ["cancelled", "cancelled"]


def test_run_page_shows_the_running_stage_first_headline_curves_numbers_and_filters_in_words(
    client, world, enqueued_stages
):
    project, _, users = world
    run = run_services.training_run_launch(
        project=project, preset="rlhf", stage_configs={"sft": {"max_steps": 2}},
        filters={"aggregation": "all", "date_from": "2020-01-01"},
    )  # fmt: skip
    sft, reward, ppo = run.stages.order_by("position")
    StageRun.objects.filter(pk=sft.pk).update(
        status="succeeded", step=2,
        metrics=[{"step": 1, "values": {"loss": 2.0, "learning_rate": 2e-5}},
                 {"step": 2, "values": {"loss": 1.5, "learning_rate": 2e-5}},
                 {"step": 2, "values": {"train_runtime": 12.3456}}],
    )  # fmt: skip
    StageRun.objects.filter(pk=reward.pk).update(
        status="running", step=2,
        metrics=[{"step": 1, "values": {"loss": 0.7, "accuracy": 0.5, "grad_norm": 3.0}},
                 {"step": 2, "values": {"loss": 0.6, "accuracy": 0.75, "grad_norm": 2.5}}],
        log_tail="x" * 500,
    )  # fmt: skip
    _client(client, users["researcher"])
    html = client.get(f"/training/runs/{run.pk}/").content.decode()
    order = [html.index(f'id="stage-{stage.pk}"') for stage in (reward, ppo, sft)]
    assert order == sorted(order), "the running stage first, then what waits, finished last"
    assert f'<details class="stage" id="stage-{reward.pk}" data-stage-status="running" open>' in html
    assert f'<details class="stage" id="stage-{sft.pk}" data-stage-status="succeeded">' in html  # collapsed
    # Headline curves (loss) at once, the rest behind a toggle, constants and one-offs as numbers.
    curves = re.search(rf'<script id="curves-{reward.pk}"[^>]*>(.*?)</script>', html, re.S).group(1)
    more = re.search(rf'<script id="more-series-{reward.pk}"[^>]*>(.*?)</script>', html, re.S).group(1)
    assert set(json.loads(curves)) == {"loss"} and set(json.loads(more)) == {"accuracy", "grad_norm"}
    assert "2 more metrics" in html
    summary = re.search(rf'id="stage-{sft.pk}".*?<dl class="summary"[^>]*>(.*?)</dl>', html, re.S).group(1)
    assert (
        "<dt>learning_rate</dt><dd>2e-5</dd>" in summary and "<dt>train_runtime</dt><dd>12.35</dd>" in summary
    )
    assert f'id="more-series-{sft.pk}"' not in html and "E-5" not in html
    filters = re.search(r'data-testid="filters">(.*?)</p>', html, re.S).group(1)
    assert (
        filters.startswith("<strong>Filters</strong> Every vote,")
        and "submitted from 2020-01-01 on" in filters
    )
    assert "{" not in filters


def test_model_pages_download_and_use_for_sampling(client, world):
    _, base, users = world
    _client(client, users["researcher"])
    detail = client.get(f"/models/{base.pk}/")
    assert b"model.safetensors" in detail.content and b"Use for sampling" not in detail.content
    download = client.get(f"/models/{base.pk}/files/config.json")
    assert download.status_code == 200 and b"llama" in b"".join(download.streaming_content)
    assert client.get(f"/models/{base.pk}/files/../../../etc/passwd").status_code == 404
    assert client.post(f"/models/{base.pk}/use-for-sampling/").status_code == 403

    _client(client, users["admin"])
    assert client.post(f"/models/{base.pk}/use-for-sampling/").status_code == 302
    assert ModelVersion.objects.get(pk=base.pk).use_for_sampling


def test_launch_round_and_run_status_commands(world, enqueued_stages, capsys):
    project, _, _ = world
    call_command(
        "launch_round",
        "--project",
        project.slug,
        "--preset",
        "sft",
        "--config",
        '{"sft": {"max_steps": 2}}',
        "--sample-after",
    )
    run = TrainingRun.objects.get()
    assert run.sample_after == {}
    assert f"Launched run #{run.pk}" in capsys.readouterr().out
    call_command("run_status", str(run.pk))
    out = capsys.readouterr().out
    assert "0 sft" in out and "pending" in out
    with pytest.raises(CommandError, match="sft.max_steps: must be at least 1"):
        call_command(
            "launch_round",
            "--project",
            project.slug,
            "--preset",
            "sft",
            "--config",
            '{"sft": {"max_steps": -1}}',
        )
    with pytest.raises(CommandError, match="No project"):
        call_command("launch_round", "--project", "nope", "--preset", "sft")


def test_launch_form_and_command_name_each_unrealistic_field(
    client, world, enqueued_stages, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        project, _, users = world
        _client(client, users["admin"])
        response = client.post("/training/launch/", _form(project, preset="rlhf", max_steps="1000000000000"))
        assert response.status_code == 422
        # Once, not per stage.
        assert response.context["form"].errors["max_steps"] == ["must be at most 1000000"]
        advanced = '{"sft": {"device": "xyz", "peft": "lora", "seed": 1180591620717411303424}, "ppo": {"temperature": 0}}'
        response = client.post("/training/launch/", _form(project, preset="rlhf", advanced=advanced))
        assert response.status_code == 422
        errors = " | ".join(response.context["form"].errors["advanced"])
        for field in ("sft.device", "sft.peft", "sft.seed", "ppo.temperature"):
            assert f"({field})" in errors, errors
        assert "SFT seed must be at most 4294967295 (sft.seed)" in errors
        response = client.post(
            "/training/launch/", _form(project, advanced='{"sft": {"learning_rate": 1e999}}')
        )
        assert (
            "SFT learning rate must be a finite number (sft.learning_rate)"
            in response.context["form"].errors["advanced"]
        )
        assert TrainingRun.objects.count() == 0

        with pytest.raises(CommandError) as excinfo:
            call_command(
                "launch_round", "--project", project.slug, "--preset", "sft",
                "--config", '{"sft": {"device": "meta", "batch_size": 1e9}}',
                "--sample-after", '{"limit": "abc", "params": {"temperature": "hot"}}',
            )  # fmt: skip
        message = str(excinfo.value)
        for field in (
            "sft.device",
            "sft.batch_size",
            "sample_after.limit",
            "sample_after.params.temperature",
        ):
            assert f"  {field}: " in message, message
        assert TrainingRun.objects.count() == 0
    assert enqueued_stages == []  # nothing was sent, not even once committed
