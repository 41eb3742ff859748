"""Dataset helpers shared by the stages: pairs from k-way rankings, held-out splits, chat formatting.

Rows follow TRL's conversational formats:
- SFT:        {"messages": [...]} or {"prompt": [...], "completion": [...]}
- preference: {"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}], "rejected": [...],
               optional "margin", optional "domain"}
- ranking:    {"prompt": [...], "responses": [str | [messages]], "ranks": [int]} — rank 1 is best, equal ranks tie.
"""

from __future__ import annotations

from itertools import combinations

from datasets import Dataset


def as_assistant_messages(response) -> list[dict]:
    """A response as TRL's conversational completion: a plain string becomes one assistant message."""
    if isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    return list(response)


def pairs_from_ranking(
    prompt: list[dict],
    responses: list,
    ranks: list[int],
    margin_per_rank: float = 0.0,
    extra: dict | None = None,
) -> list[dict]:
    """Every (better, worse) pair of a k-way ranking; ties give no preference and are dropped.

    The margin grows with the rank distance (`margin_per_rank * (worse_rank - better_rank)`), so a response ranked
    1st of 4 is pushed further above the 4th than above the 2nd (Llama 2's margin loss, from rank distance).
    """
    if len(responses) != len(ranks):
        raise ValueError(f"{len(responses)} responses but {len(ranks)} ranks")
    pairs = []
    for first, second in combinations(range(len(responses)), 2):
        if ranks[first] == ranks[second]:
            continue
        better, worse = (first, second) if ranks[first] < ranks[second] else (second, first)
        pairs.append(
            {
                "prompt": prompt,
                "chosen": as_assistant_messages(responses[better]),
                "rejected": as_assistant_messages(responses[worse]),
                "margin": float(margin_per_rank * (ranks[worse] - ranks[better])),
                **(extra or {}),
            }
        )
    return pairs


def preference_pairs(data: Dataset, margin_per_rank: float = 0.0) -> Dataset:
    """Preference rows as they are, or ranking rows expanded into pairs (ties dropped)."""
    if "ranks" not in data.column_names:
        return data
    carried = [name for name in data.column_names if name not in ("prompt", "responses", "ranks")]
    rows = []
    for row in data:
        rows.extend(
            pairs_from_ranking(
                row["prompt"],
                row["responses"],
                row["ranks"],
                margin_per_rank,
                {name: row[name] for name in carried},
            )
        )
    if not rows:
        raise ValueError("the rankings hold no strict preference (all ties)")
    return Dataset.from_list(rows)


def split_held_out(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(train, held_out); held_out is None when `fraction` is 0 or the data is too small to spare a row."""
    held_out_size = int(round(len(data) * fraction))
    if fraction <= 0 or held_out_size == 0 or held_out_size >= len(data):
        return data, None
    split = data.train_test_split(test_size=held_out_size, seed=seed, shuffle=True)
    return split["train"], split["test"]


def conversation_text(tokenizer, prompt: list[dict], completion: list[dict] | str) -> str:
    """The chat-template text of prompt + completion, as TRL tokenizes conversational preference rows."""
    return tokenizer.apply_chat_template(prompt + as_assistant_messages(completion), tokenize=False)


def prompt_text(tokenizer, prompt: list[dict]) -> str:
    """The chat-template text of a prompt, ending with the assistant header that generation continues from."""
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
