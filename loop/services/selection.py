"""Active selection: which new comparisons annotators see first.

A candidate pair is uncertain when the latest reward model can barely tell its two responses apart (small margin)
or when annotators already disagreed on that prompt. The `uncertain_share` most uncertain candidates get a
priority above every ordinary item (higher = leased first), ordered by uncertainty; the rest keep priority 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from labeling.models import Project, Response
from labeling.selectors.quality import review_queue
from training.models import ModelVersion

ScoreResponses = Callable[[Sequence[Response]], dict[int, float]]


@dataclass(frozen=True)
class Candidate:
    prompt_id: int
    responses: tuple[Response, ...]


def uncertainty(
    *, candidate: Candidate, scores: Mapping[int, float] | None, disagreement: Mapping[int, float]
) -> float:
    """1 / (1 + reward margin) for the closest pair in the candidate, plus the prompt's annotator disagreement."""
    value = disagreement.get(candidate.prompt_id, 0.0)
    if scores:
        values = sorted(scores[response.pk] for response in candidate.responses)
        closest = min(b - a for a, b in zip(values, values[1:], strict=False))
        value += 1.0 / (1.0 + closest)
    return value


def priorities(
    *,
    candidates: Sequence[Candidate],
    scores: Mapping[int, float] | None,
    disagreement: Mapping[int, float],
    uncertain_share: float,
) -> list[float]:
    """Priority of each candidate, in input order."""
    if not 0 <= uncertain_share <= 1:
        raise ValueError("uncertain_share must be within [0, 1]")
    values = [uncertainty(candidate=c, scores=scores, disagreement=disagreement) for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (-values[i], i))
    boosted = set(order[: math.ceil(uncertain_share * len(candidates))])
    return [1.0 + values[i] if i in boosted else 0.0 for i in range(len(candidates))]


def prompt_disagreement(*, project: Project) -> dict[int, float]:
    """1 − pairwise percent agreement of the most contested comparison of each prompt (0 when everyone agreed)."""
    result: dict[int, float] = {}
    for item in review_queue(project=project, include_adjudicated=False):
        prompt_id = item.comparison.prompt_id
        result[prompt_id] = max(result.get(prompt_id, 0.0), 1.0 - item.agreement)
    return result


def latest_reward_model() -> ModelVersion | None:
    return ModelVersion.objects.filter(kind=ModelVersion.Kind.REWARD).order_by("-id").first()


def reward_model_scorer(version: ModelVersion, *, batch_size: int = 16) -> ScoreResponses:
    """Scores responses with a registered reward model (loaded once, on CUDA when present)."""
    from training.engine.common import pick_device
    from training.engine.reward_model import load_reward_model, score_texts

    model, tokenizer = load_reward_model(
        Path(settings.ARTIFACT_ROOT) / version.artifact_path, pick_device("auto")
    )

    def score(responses: Sequence[Response]) -> dict[int, float]:
        prompts = [response.prompt.messages for response in responses]
        values = score_texts(model, tokenizer, prompts, [r.content for r in responses], batch_size=batch_size)
        return {response.pk: float(value) for response, value in zip(responses, values.tolist(), strict=True)}

    return score
