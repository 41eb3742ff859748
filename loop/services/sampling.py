"""Sampling: a model version answers a prompt pool; its answers become new comparisons, uncertain first."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from core.jobs import job_send
from labeling.models import Project, Prompt, Response
from labeling.services.projects import comparison_get_or_create
from loop.jobs import SAMPLING_JOB
from loop.models import SamplingJob
from loop.services.selection import (
    Candidate,
    latest_reward_model,
    priorities,
    prompt_disagreement,
    reward_model_scorer,
)
from training.engine.common import MAX_SEED, Bounds
from training.models import ModelVersion

logger = logging.getLogger(__name__)

DEFAULT_PARAMS = {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.95, "seed": 0, "batch_size": 16}


# Realistic values of each generation parameter: (type, range); strings and booleans are refused, not coerced.
PARAM_LIMITS: dict[str, tuple[type, Bounds]] = {
    "max_new_tokens": (int, Bounds(1, 4096)),
    "temperature": (float, Bounds(0, 10)),  # 0 means greedy
    "top_p": (float, Bounds(0, 1, low_open=True)),
    "seed": (int, Bounds(0, MAX_SEED)),
    "batch_size": (int, Bounds(1, 1024)),
}
# The options of a job (sampling_job_create's keyword arguments) a training run's `sample_after` may hold.
SAMPLING_OPTIONS = ("pool", "limit", "params", "make_comparisons", "uncertain_share")
MAX_LIMIT = 10_000_000


def _value_error(value, kind: type, bounds: Bounds) -> str | None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and not isinstance(value, int))
    ):
        return "must be an integer" if kind is int else "must be a number"
    return bounds.error(value)


def sampling_params_errors(params) -> dict[str, str]:
    """Each bad generation parameter by name (unknown ones included); empty when `params` is usable."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        return {"__all__": "must be an object of generation parameters"}
    errors = {
        name: f"unknown generation parameter; known: {', '.join(PARAM_LIMITS)}"
        for name in params
        if name not in PARAM_LIMITS
    }
    for name, value in params.items():
        if name in PARAM_LIMITS and (message := _value_error(value, *PARAM_LIMITS[name])):
            errors[name] = message
    return errors


def sampling_params_validate(params: dict | None) -> dict:
    errors = sampling_params_errors(params)
    if errors:
        raise ValidationError({"params": [f"{name}: {message}" for name, message in errors.items()]})
    return {**DEFAULT_PARAMS, **(params or {})}


def sampling_options_validate(options: dict) -> dict:
    """Check a sampling job's options before anything runs (e.g. at launch, for a run's `sample_after`).

    Raises ValidationError keyed by option (`limit`, `params.temperature`, ...); returns the options unchanged.
    """
    if not isinstance(options, dict):
        raise ValidationError({"__all__": ["Give an object of sampling options."]})
    errors: dict[str, str] = {
        name: f"Unknown sampling option; choose from {', '.join(SAMPLING_OPTIONS)}."
        for name in options
        if name not in SAMPLING_OPTIONS
    }
    if options.get("pool", SamplingJob.Pool.NEW) not in SamplingJob.Pool.values:
        errors["pool"] = f"Choose one of {', '.join(SamplingJob.Pool.values)}."
    if options.get("limit") is not None and (
        message := _value_error(options["limit"], int, Bounds(1, MAX_LIMIT))
    ):
        errors["limit"] = f"{message} (a number of prompts; null for all)"
    if not isinstance(options.get("make_comparisons", True), bool):
        errors["make_comparisons"] = "must be true or false"
    if message := _value_error(options.get("uncertain_share", 0.5), float, Bounds(0, 1)):
        errors["uncertain_share"] = message
    errors.update(
        {f"params.{name}": message for name, message in sampling_params_errors(options.get("params")).items()}
    )
    if errors:
        raise ValidationError({name: [message] for name, message in errors.items()})
    return options


def sampling_job_create(
    *,
    project: Project,
    model_version: ModelVersion,
    pool: str = SamplingJob.Pool.NEW,
    limit: int | None = None,
    params: dict | None = None,
    make_comparisons: bool = True,
    uncertain_share: float = 0.5,
    reward_model: ModelVersion | None = None,
    created_by=None,
    enqueue: bool = True,
    quiet: bool = False,
) -> SamplingJob:
    """Validate and enqueue a sampling job on the `default` queue (unless `enqueue=False`); returns at once.

    On a broker outage the job is saved and BrokerUnavailable is raised after the commit (a warning instead when
    `quiet`); the job starts once the broker is back (core.jobs).
    """
    if model_version.kind != ModelVersion.Kind.POLICY:
        raise ValidationError({"model_version": "Only a policy generates responses."})
    if reward_model is not None and reward_model.kind != ModelVersion.Kind.REWARD:
        raise ValidationError({"reward_model": "Choose a reward model."})
    job = SamplingJob(
        project=project, model_version=model_version, pool=pool, limit=limit, params=sampling_params_validate(params),
        make_comparisons=make_comparisons, uncertain_share=uncertain_share, reward_model=reward_model,
        created_by=created_by,
    )  # fmt: skip
    job.full_clean()
    with transaction.atomic():
        job.save()
        if enqueue:
            transaction.on_commit(lambda: sampling_job_enqueue(job=job, quiet=quiet))
    return job


def sampling_job_enqueue(*, job: SamplingJob, quiet: bool = False) -> None:
    job_send(kind=SAMPLING_JOB, pk=job.pk, quiet=quiet)


def pool_prompts(*, job: SamplingJob) -> list[Prompt]:
    prompts = Prompt.objects.filter(project=job.project).order_by("id")
    if job.pool == SamplingJob.Pool.NEW:
        answered = Response.objects.filter(prompt=OuterRef("pk"), model_version=job.model_version)
        prompts = prompts.filter(~Exists(answered))
    elif job.pool == SamplingJob.Pool.HELD_OUT:
        prompts = prompts.filter(metadata__held_out=True)
    if job.limit:
        prompts = prompts[: job.limit]
    return list(prompts)


def response_external_id(*, version: ModelVersion, seed: int) -> str:
    return f"model{version.pk}-seed{seed}"


def generate_responses(*, job: SamplingJob, prompts: Sequence[Prompt], progress=None) -> list[Response]:
    """Batched generation with a KV cache (engine.generation), CUDA when present; one Response per prompt."""
    import torch

    from training.engine.common import ModelRef, pick_device
    from training.engine.finetuning_methods import load_model_ref
    from training.engine.generation import SamplingSettings, generate

    params = job.params
    device = pick_device("auto")
    version = job.model_version
    model, tokenizer = load_model_ref(
        ModelRef(Path(settings.ARTIFACT_ROOT) / version.artifact_path, version.name), device
    )
    model.eval()
    sampling = SamplingSettings(
        max_new_tokens=params["max_new_tokens"], temperature=params["temperature"], top_p=params["top_p"]
    )
    generator = torch.Generator(device=device).manual_seed(int(params["seed"]))
    external_id = response_external_id(version=version, seed=int(params["seed"]))
    created: list[Response] = []
    batch_size = int(params["batch_size"])
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        with torch.no_grad():
            generated = generate(model, tokenizer, [p.messages for p in batch], sampling, generator)
        # An answer that hit max_new_tokens before its end-of-turn token was cut off: say so on the response.
        truncated = (~generated.ended_with_eos).tolist()
        with transaction.atomic():
            for prompt, text, cut in zip(batch, generated.texts, truncated, strict=True):
                response, was_created = Response.objects.get_or_create(
                    prompt=prompt, external_id=external_id,
                    defaults={"content": text.strip(), "model_version": version,
                              "generation_params": {**params, "device": str(device), "truncated": bool(cut)}},
                )  # fmt: skip
                created.append(response)
        if progress:
            progress(len(created))
    return created


def opponents_for(*, response: Response, version: ModelVersion) -> list[Response]:
    """Who a new response is compared with: the previous policy's answer, the base model's (so every round is
    measured against the start of its lineage), then reference (non-model) answers."""
    others = Response.objects.filter(prompt_id=response.prompt_id).exclude(pk=response.pk).order_by("id")
    chosen: list[Response] = []
    for ancestor_id in dict.fromkeys(a for a in (version.parent_id, version.base_id) if a):
        previous = others.filter(model_version_id=ancestor_id).first()
        if previous:
            chosen.append(previous)
    chosen.extend(others.filter(model_version__isnull=True)[:7])
    if not chosen:  # no previous policy answer and no reference: compare with any other model's answer
        chosen.extend(others.exclude(model_version=version)[:1])
    return chosen


def candidates_for(
    *, project: Project, responses: Sequence[Response], version: ModelVersion
) -> list[Candidate]:
    """Pairwise projects: the new answer against each opponent. Ranking projects: one k-way set per prompt."""
    candidates: list[Candidate] = []
    for response in responses:
        opponents = opponents_for(response=response, version=version)
        if project.mode == Project.Mode.PAIRWISE:
            candidates.extend(Candidate(response.prompt_id, (response, other)) for other in opponents)
        elif len(opponents) + 1 >= project.k:
            candidates.append(Candidate(response.prompt_id, (response, *opponents[: project.k - 1])))
    return candidates


def comparisons_create(*, job: SamplingJob, responses: Sequence[Response]) -> int:
    """New comparisons for the new responses, prioritised by active selection. Returns how many were created."""
    version = job.model_version
    candidates = candidates_for(project=job.project, responses=responses, version=version)
    if not candidates:
        return 0
    reward_version = job.reward_model or latest_reward_model()
    scores = None
    if reward_version is not None:
        scorer = reward_model_scorer(reward_version)
        unique = {r.pk: r for c in candidates for r in c.responses}
        scores = scorer(list(unique.values()))
    values = priorities(
        candidates=candidates, scores=scores, disagreement=prompt_disagreement(project=job.project),
        uncertain_share=job.uncertain_share,
    )  # fmt: skip
    created = 0
    with transaction.atomic():
        for candidate, priority in zip(candidates, values, strict=True):
            prompt = candidate.responses[0].prompt
            _, was_created = comparison_get_or_create(
                prompt=prompt, responses=candidate.responses, priority=priority
            )
            created += was_created
    return created


def sampling_job_execute(*, job_id: int, task_id: str = "") -> str:
    """Run a queued job. Idempotent: only a queued job is claimed (atomically), or a running one whose own message
    comes back (its worker died); a duplicate message for a job that is running, done or failed does nothing."""
    from training.engine.common import pick_device

    claimable = Q(status=SamplingJob.Status.QUEUED)
    if task_id:
        claimable |= Q(status=SamplingJob.Status.RUNNING, celery_task_id=task_id)
    claimed = SamplingJob.objects.filter(claimable, pk=job_id).update(
        status=SamplingJob.Status.RUNNING, started_at=timezone.now(), done=0, device=str(pick_device("auto")),
        error="", celery_task_id=task_id or F("celery_task_id"),
    )  # fmt: skip
    if not claimed:
        return "skipped"
    job = SamplingJob.objects.select_related("project", "model_version", "reward_model").get(pk=job_id)
    prompts = pool_prompts(job=job)
    SamplingJob.objects.filter(pk=job.pk).update(total=len(prompts))
    try:
        responses = generate_responses(
            job=job, prompts=prompts, progress=lambda n: SamplingJob.objects.filter(pk=job.pk).update(done=n)
        )
        compared = comparisons_create(job=job, responses=responses) if job.make_comparisons else 0
    except Exception as exc:
        logger.exception("sampling job %s failed", job.pk)
        SamplingJob.objects.filter(pk=job.pk).update(
            status=SamplingJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
        )
        return SamplingJob.Status.FAILED
    SamplingJob.objects.filter(pk=job.pk).update(
        status=SamplingJob.Status.SUCCEEDED, responses_created=len(responses), comparisons_created=compared,
        finished_at=timezone.now(),
    )  # fmt: skip
    return SamplingJob.Status.SUCCEEDED
