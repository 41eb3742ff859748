"""Sampling jobs: a policy answers a prompt pool; its answers become new comparisons, uncertain first.

Here: checking a job's options and creating (queueing) it, what web processes and training runs' `sample_after` need.
A worker runs it with `loop.services.sampling_execution`, which loads the model (torch).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from core.jobs import job_send
from labeling.models import Project
from loop.jobs import SAMPLING_JOB
from loop.models import SamplingJob
from registry.models import ModelVersion
from training.engine.common import MAX_SEED, Bounds

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
        project=project,
        model_version=model_version,
        pool=pool,
        limit=limit,
        params=sampling_params_validate(params),
        make_comparisons=make_comparisons,
        uncertain_share=uncertain_share,
        reward_model=reward_model,
        created_by=created_by,
    )
    job.full_clean()
    with transaction.atomic():
        job.save()
        if enqueue:
            transaction.on_commit(lambda: sampling_job_enqueue(job=job, quiet=quiet))
    return job


def sampling_job_enqueue(*, job: SamplingJob, quiet: bool = False) -> None:
    job_send(kind=SAMPLING_JOB, pk=job.pk, quiet=quiet)
