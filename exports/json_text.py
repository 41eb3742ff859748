"""The canonical JSON text of export rows, and the fragments the fast paths assemble lines from.

`canonical_json_line(row)` is the definition (sorted keys, no spaces, UTF-8 text, no NaN); every helper here gives
exactly the text it would give, without building the objects first."""

from __future__ import annotations

import json
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any


def canonical_json_line(row: Mapping[str, Any]) -> str:
    """The canonical serialisation of one row (sorted keys, no spaces, UTF-8 text), without the newline."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def assistant_turn(content: str) -> list[dict[str, str]]:
    """A response as a conversation of one assistant message (TRL's conversational format)."""
    return [{"role": "assistant", "content": content}]


def assistant_turn_json(content: str) -> str:
    """canonical_json_line(assistant_turn(content)), without building the list: json.dumps(ensure_ascii=False)
    encodes a str with exactly this function (the C `encode_basestring`)."""
    return '[{"content":' + encode_basestring(content) + ',"role":"assistant"}]'


def json_number(value: float | int | None) -> str:
    """A number (or null) as json.dumps writes it."""
    if value is None:
        return "null"
    return float.__repr__(value) if isinstance(value, float) else int.__repr__(value)
