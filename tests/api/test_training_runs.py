"""Launching and steering training runs through the API (admins): 201 with the stages, 400 with the service's
per-field errors and nothing created or enqueued, cancel / resume / retry."""

from __future__ import annotations

import pytest

from tests.training.factories import TINY_STAGE_CONFIGS, ranked_project, register_tiny_base
from training.models import StageRun, TrainingRun

pytestmark = pytest.mark.django_db

URL = "/api/v1/training-runs/"


@pytest.fixture
def launchable(tiny_model_dir):
    project = ranked_project(slug="api-train", prompts=4)
    base = register_tiny_base(tiny_model_dir)
    return project, base


def test_admin_launches_a_run_with_its_stages(
    clients, launchable, enqueued_stages, django_capture_on_commit_callbacks
):
    project, base = launchable
    with django_capture_on_commit_callbacks(execute=True):
        response = clients["admin"].post(
            URL,
            {
                "project": project.slug,
                "preset": "rlhf",
                "base_model": base.pk,
                "peft": {"sft": "lora", "reward": "full", "ppo": "lora"},
                "stage_configs": {kind: TINY_STAGE_CONFIGS[kind] for kind in ("sft", "reward", "ppo")},
                "filters": {"aggregation": "all"},
            },
            format="json",
        )
    assert response.status_code == 201, response.json()
    body = response.json()
    run = TrainingRun.objects.get()
    assert body["id"] == run.pk and body["preset"] == "rlhf" and body["base_model"] == base.pk
    assert [(s["kind"], s["peft"], s["status"]) for s in body["stages"]] == [
        ("sft", "lora", "pending"),
        ("reward", "full", "pending"),
        ("ppo", "lora", "pending"),
    ]
    assert body["stages"][0]["total_steps"] == TINY_STAGE_CONFIGS["sft"]["max_steps"]
    assert body["dataset_filters"]["aggregation"] == "all" and len(body["dataset_hash"]) == 64
    assert enqueued_stages == [body["stages"][0]["id"]]  # only the first stage, on commit
    # Researchers see it; the default base model is used when none is given.
    assert clients["researcher"].get(f"{URL}{run.pk}/").json()["stages"][2]["kind"] == "ppo"
    second = clients["admin"].post(URL, {"project": project.slug, "preset": "sft"}, format="json")
    assert second.status_code == 201 and second.json()["base_model"] == base.pk


def test_invalid_launch_answers_400_per_field_and_creates_nothing(
    clients, launchable, enqueued_stages, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        project, _ = launchable
        response = clients["admin"].post(
            URL,
            {
                "project": project.slug,
                "preset": "rlhf",
                "peft": {"sft": "full", "reward": "bogus", "ppo": "lora"},
                "stage_configs": {"sft": {"max_steps": 0, "nope": 1}, "ppo": {"learning_rate": "fast"}},
                "filters": {"min_agreement": 3},
            },
            format="json",
        )
        assert response.status_code == 400
        errors = response.json()
        assert errors["sft.max_steps"] == ["must be at least 1"]
        assert errors["ppo.learning_rate"] == ["must be a number"]
        assert "sft.nope" in errors and "reward.peft.method" in errors and "filters" in errors
        cases = [
            ({"preset": "bogus"}, "preset"),
            ({"preset": "rft"}, "ppo.rules"),  # rule-based rewards need rules
            ({"preset": "sft", "filters": {"adjudicated_only": True}}, "filters"),  # no rows to train on
            ({"preset": "sft", "filters": {"colour": "red"}}, "filters"),  # unknown filter
            ({"preset": "sft", "sample_after": {"nope": 1}}, "sample_after"),
            ({"preset": "sft", "peft": 3}, "peft"),
            ({"preset": "sft", "stage_configs": {"sft": 5}}, "stage_configs"),
            ({"preset": "sft", "project": "missing"}, "project"),
            ({"preset": "sft", "base_model": 999999}, "base_model"),
        ]
        for payload, field in cases:
            response = clients["admin"].post(URL, {"project": project.slug, **payload}, format="json")
            assert response.status_code == 400, payload
            body = response.json()
            assert any(key == field or key.startswith(f"{field}") for key in body), (payload, body)
        assert TrainingRun.objects.count() == 0 and StageRun.objects.count() == 0
    assert enqueued_stages == []  # nothing was sent, not even once committed


def test_cancel_resume_retry(clients, launchable, enqueued_stages, django_capture_on_commit_callbacks):
    project, base = launchable
    admin = clients["admin"]

    def committed_post(url, data=None):
        with django_capture_on_commit_callbacks(execute=True):
            return admin.post(url, data, format="json")

    launched = committed_post(URL, {"project": project.slug, "preset": "preference"}).json()
    run_id, (first, second) = launched["id"], [s["id"] for s in launched["stages"]]
    assert enqueued_stages == [first]
    for role in ("researcher", "annotator"):
        assert clients[role].post(f"{URL}{run_id}/cancel/").status_code == 403
    cancelled = committed_post(f"{URL}{run_id}/cancel/").json()
    assert cancelled["status"] == "cancelled"
    assert {s["status"] for s in cancelled["stages"]} == {"cancelled"}
    # Resume the first stage: it and the later cancelled stage wait again; it is enqueued.
    resumed = committed_post(f"{URL}{run_id}/stages/{first}/resume/").json()
    assert resumed["status"] == "queued" and [s["status"] for s in resumed["stages"]] == [
        "pending",
        "pending",
    ]
    assert enqueued_stages == [first, first]
    # A pending stage cannot restart: the service's message, per field.
    again = committed_post(f"{URL}{run_id}/stages/{first}/retry/")
    assert again.status_code == 400 and "status" in again.json()
    StageRun.objects.filter(pk=second).update(status=StageRun.Status.FAILED, step=2)
    retried = committed_post(f"{URL}{run_id}/stages/{second}/retry/").json()
    assert retried["stages"][1]["status"] == "pending" and retried["stages"][1]["step"] == 0
    assert enqueued_stages == [first, first, second]
    # A stage of another run is not found.
    other = TrainingRun.objects.create(project=project, preset="sft", base_model=base)
    assert clients["admin"].post(f"{URL}{other.pk}/stages/{second}/resume/").status_code == 404


def test_configs_that_would_crash_or_stall_later_answer_400_naming_the_field(clients, launchable):
    project, _ = launchable
    lora = {"sft": "lora"}
    cases = [
        ({"stage_configs": {"sft": {"device": "xyz"}}}, "sft.device"),
        ({"stage_configs": {"sft": {"device": "meta"}}}, "sft.device"),
        ({"stage_configs": {"sft": {"learning_rate": 1e308}}}, "sft.learning_rate"),
        ({"stage_configs": {"sft": {"seed": 2**70}}}, "sft.seed"),
        ({"stage_configs": {"sft": {"max_steps": 10**12}}}, "sft.max_steps"),
        ({"stage_configs": {"sft": {"max_steps": 1e12}}}, "sft.max_steps"),
        ({"stage_configs": {"sft": {"batch_size": 10**7}}}, "sft.batch_size"),
        ({"stage_configs": {"sft": {"batch_size": -8}}}, "sft.batch_size"),
        ({"stage_configs": {"sft": {"batch_size": "8"}}}, "sft.batch_size"),
        ({"stage_configs": {"sft": {"max_length": True}}}, "sft.max_length"),
        ({"stage_configs": {"sft": {"peft": "lora"}}}, "sft.peft"),  # was a 500
        ({"peft": {"sft": "lora", "ppo": "lora"}}, "peft.ppo"),  # the sft preset has no ppo stage
        ({"peft": {"sft": "lora", "sfT": "full"}}, "peft.sfT"),
        ({"peft": "lora", "stage_configs": {"sft": {"peft": {"method": "adapter"}}}}, "sft.peft.method"),
        ({"peft": lora, "stage_configs": {"sft": {"peft": {"lora_target_modules": ["qkv"]}}}},
         "sft.peft.lora_target_modules"),  # the tiny Llama has q_proj, k_proj, …, not qkv
        ({"sample_after": {"limit": "abc"}}, "sample_after.limit"),
        ({"sample_after": {"limit": -5}}, "sample_after.limit"),
        ({"sample_after": {"params": {"temperature": "hot"}}}, "sample_after.params.temperature"),
        ({"sample_after": {"params": {"max_new_tokens": 10**9}}}, "sample_after.params.max_new_tokens"),
        ({"sample_after": {"uncertain_share": 2}}, "sample_after.uncertain_share"),
        ({"sample_after": {"pool": "everything"}}, "sample_after.pool"),
    ]  # fmt: skip
    for payload, field in cases:
        response = clients["admin"].post(
            URL, {"project": project.slug, "preset": "sft", **payload}, format="json"
        )
        assert response.status_code == 400, (payload, response.content)
        body = response.json()
        assert field in body, (payload, body)
        assert "total_steps" not in body
    # Several bad fields of several stages come back together.
    response = clients["admin"].post(
        URL,
        {
            "project": project.slug,
            "preset": "rlhf",
            "stage_configs": {"sft": {"device": "xyz"}, "ppo": {"temperature": 0, "batch_size": True}},
            "sample_after": {"limit": 0},
        },
        format="json",
    )
    body = response.json()
    assert {"sft.device", "ppo.temperature", "ppo.batch_size", "sample_after.limit"} <= set(body), body
    assert TrainingRun.objects.count() == 0 and StageRun.objects.count() == 0
    # The method may come from the stage config alone; LoRA targets the model has pass.
    response = clients["admin"].post(
        URL,
        {
            "project": project.slug,
            "preset": "sft",
            "stage_configs": {
                "sft": {"peft": {"method": "lora", "lora_target_modules": ["self_attn.q_proj"]}}
            },
            "sample_after": {"limit": 5, "params": {"temperature": 0.5}},
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["stages"][0]["peft"] == "lora"


def test_a_run_shows_each_stage_s_metric_history_log_tail_and_phase_as_its_page_does(clients, launchable):
    project, base = launchable
    run = TrainingRun.objects.create(project=project, preset="sft", base_model=base, status="running")
    metrics = [
        {"step": 1, "values": {"loss": 2.5, "learning_rate": 0.001}, "at": 1700000000.5},
        {"step": 2, "values": {"loss": None}, "at": 1700000001.0},  # a NaN loss is stored as null
    ]
    phase = {"step": 3, "phase": "rollout", "detail": "4 prompts", "tokens": 96, "at": 1700000002.0}
    StageRun.objects.create(
        run=run,
        position=0,
        kind="sft",
        status="running",
        step=2,
        total_steps=5,
        config={},
        metrics=metrics,
        log_tail="10:00:01 step 1/5 loss=2.5\n10:00:02 step 2/5 loss=nan",
        phase=phase,
        device="cpu",
        worker="gpu-1@host",
    )
    detail = clients["researcher"].get(f"{URL}{run.pk}/").json()
    stage = detail["stages"][0]
    assert stage["metrics"] == metrics
    assert stage["log_tail"].splitlines()[-1] == "10:00:02 step 2/5 loss=nan"
    assert stage["phase"] == phase and stage["device"] == "cpu" and stage["worker"] == "gpu-1@host"
    # The list stays light: progress per stage, no histories.
    listed = clients["researcher"].get(URL).json()["results"][0]["stages"][0]
    assert listed["step"] == 2 and "metrics" not in listed and "log_tail" not in listed
    StageRun.objects.filter(run=run).update(phase={})
    assert clients["researcher"].get(f"{URL}{run.pk}/").json()["stages"][0]["phase"] is None
