"""The content hash of an export (sha256 over its rows' canonical JSON lines) and the annotator pseudonyms it uses.

Same filters + same data → same hash, whatever the file type written; for a JSONL export it is also the sha256 of
the file, whose lines are exactly those."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from exports.json_text import canonical_json_line
from labeling.pseudonyms import annotator_pseudonym


class ContentHasher:
    """Incremental `content_hash`: feed rows (or their canonical lines) as they are written."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.rows = 0

    def update_line(self, line: str) -> None:
        self._sha.update(line.encode())
        self._sha.update(b"\n")
        self.rows += 1

    def update_block(self, data: bytes, rows: int) -> None:
        """A block of canonical lines as UTF-8 bytes, each with its newline (what the JSONL writer writes)."""
        self._sha.update(data)
        self.rows += rows

    def update_lines(self, lines: list[str]) -> None:
        """Many canonical lines at once (one encode and one digest update: the fast path of the writers)."""
        if lines:
            self._sha.update(("\n".join(lines) + "\n").encode())
            self.rows += len(lines)

    def update(self, row: Mapping[str, Any]) -> None:
        self.update_line(canonical_json_line(row))

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def content_hash(rows: Iterable[Mapping[str, Any]]) -> str:
    """sha256 (hex) over the rows' canonical JSON lines, each followed by a newline, in order."""
    hasher = ContentHasher()
    for row in rows:
        hasher.update(row)
    return hasher.hexdigest()


class Pseudonyms:
    """`annotator_pseudonym`, computed once per annotator for one export (an HMAC per vote costs more)."""

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, annotator_id: int) -> str:
        name = self._cache.get(annotator_id)
        if name is None:
            name = self._cache[annotator_id] = annotator_pseudonym(annotator_id)
        return name
