"""Programmatic annotators for headless loops: each rule turns (prompt, responses) into ranks (1 = best, ties equal).

Rules are names, never code: `shorter`, `longer`, `keyword:<word>` (responses containing the word win), and
`arithmetic` (for prompts like "What is 12 plus 7?" or "12 + 7", responses stating the right number win).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

Responses = Sequence[tuple[int, str]]  # (response id, content)
Scorer = Callable[[str, str], float]  # (prompt text, response) -> higher is better

_NUMBER = r"-?\d+(?:\.\d+)?"
_OPERATIONS = {
    "+": lambda a, b: a + b,
    "plus": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "minus": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "x": lambda a, b: a * b,
    "times": lambda a, b: a * b,
}
_EXPRESSION = re.compile(rf"({_NUMBER})\s*(\+|-|\*|x|plus|minus|times)\s*({_NUMBER})", re.IGNORECASE)


class OracleError(ValueError):
    pass


def _keyword_scorer(word: str) -> Scorer:
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return lambda prompt, response: float(bool(pattern.search(response)))


def _arithmetic_scorer(prompt: str, response: str) -> float:
    match = _EXPRESSION.search(prompt)
    if not match:
        return 0.0
    left, operation, right = match.groups()
    answer = _OPERATIONS[operation.lower()](float(left), float(right))
    stated = [float(number) for number in re.findall(_NUMBER, response)]
    return float(any(abs(value - answer) < 1e-9 for value in stated))


def scorer_for(rule: str) -> Scorer:
    name, _, argument = rule.partition(":")
    if name == "shorter":
        return lambda prompt, response: -len(response)
    if name == "longer":
        return lambda prompt, response: len(response)
    if name == "keyword":
        if not argument.strip():
            raise OracleError("keyword oracle needs a word: keyword:<word>")
        return _keyword_scorer(argument.strip())
    if name == "arithmetic":
        return _arithmetic_scorer
    raise OracleError(f"unknown oracle {rule!r}; choose shorter, longer, keyword:<word> or arithmetic")


def oracle_ranks(
    *,
    rule: str | Scorer,
    prompt: str,
    responses: Responses,
    allow_ties: bool,
    noise: float = 0.0,
    rng: random.Random | None = None,
) -> dict[str, int]:
    """Ranks by the rule's score (equal scores tie when allowed); with probability `noise` a random ranking."""
    rng = rng or random.Random()
    scorer = scorer_for(rule) if isinstance(rule, str) else rule
    if noise and rng.random() < noise:
        scores = {response_id: rng.random() for response_id, _ in responses}
    else:
        scores = {response_id: scorer(prompt, content) for response_id, content in responses}
    if not allow_ties:
        # Break ties at random, so a tie-free project still gets an unbiased order among equals.
        scores = {response_id: (score, rng.random()) for response_id, score in scores.items()}
    distinct = sorted(set(scores.values()), reverse=True)
    return {str(response_id): distinct.index(score) + 1 for response_id, score in scores.items()}
