"""Running a sampling job inside a worker: the policy answers the pool (batched generation on CUDA when present),
then its answers are paired with earlier ones and the pairs the newest reward model is least sure about go first.

Only workers and `manage.py sample --here` import this module: it loads the engine, torch included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from labeling.models import Project, Prompt, Response
from labeling.services.projects import comparison_get_or_create
from loop.models import SamplingJob
from loop.services.selection import Candidate, priorities, prompt_disagreement
from registry.artifacts import model_version_folder, model_version_ref
from registry.models import ModelVersion
from registry.selectors import latest_reward_model
from training.engine.common import pick_device
from training.engine.finetuning_methods import load_model_ref
from training.engine.generation import SamplingSettings, generate
from training.engine.reward_model import load_reward_model, score_texts

logger = logging.getLogger(__name__)

ScoreResponses = Callable[[Sequence[Response]], dict[int, float]]


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
    params = job.params
    device = pick_device("auto")
    version = job.model_version
    model, tokenizer = load_model_ref(model_version_ref(version), device)
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
                    prompt=prompt,
                    external_id=external_id,
                    defaults={
                        "content": text.strip(),
                        "model_version": version,
                        "generation_params": {**params, "device": str(device), "truncated": bool(cut)},
                    },
                )
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
        candidates=candidates,
        scores=scores,
        disagreement=prompt_disagreement(project=job.project),
        uncertain_share=job.uncertain_share,
    )
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
    claimable = Q(status=SamplingJob.Status.QUEUED)
    if task_id:
        claimable |= Q(status=SamplingJob.Status.RUNNING, celery_task_id=task_id)
    claimed = SamplingJob.objects.filter(claimable, pk=job_id).update(
        status=SamplingJob.Status.RUNNING,
        started_at=timezone.now(),
        done=0,
        device=str(pick_device("auto")),
        error="",
        celery_task_id=task_id or F("celery_task_id"),
    )
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
        status=SamplingJob.Status.SUCCEEDED,
        responses_created=len(responses),
        comparisons_created=compared,
        finished_at=timezone.now(),
    )
    return SamplingJob.Status.SUCCEEDED


def reward_model_scorer(version: ModelVersion, *, batch_size: int = 16) -> ScoreResponses:
    """Scores responses with a registered reward model (loaded once, on CUDA when present)."""
    model, tokenizer = load_reward_model(model_version_folder(version), pick_device("auto"))

    def score(responses: Sequence[Response]) -> dict[int, float]:
        prompts = [response.prompt.messages for response in responses]
        values = score_texts(model, tokenizer, prompts, [r.content for r in responses], batch_size=batch_size)
        return {response.pk: float(value) for response, value in zip(responses, values.tolist(), strict=True)}

    return score
