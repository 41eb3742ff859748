"""The export formats, one module each: pairwise, ranking, sft, kto, raw (`FORMATS`, in that order).

Every row also has `comparison_id` (sft and kto: `comparison_ids`), `prompt_id` and `domain`; each module's
docstring lists its columns. A format's records become rows, canonical JSON lines and card statistics through its
`RecordCodec` (`RECORD_CODECS`)."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from exports.formats import kto, pairwise, ranking, raw, sft
from exports.formats.base import Format, RecordCodec

FORMAT_SPECS: dict[str, Format] = {
    spec.name: spec for spec in (pairwise.FORMAT, ranking.FORMAT, sft.FORMAT, kto.FORMAT, raw.FORMAT)
}
FORMATS: tuple[str, ...] = tuple(FORMAT_SPECS)
RECORD_CODECS: dict[str, RecordCodec] = {name: spec.codec for name, spec in FORMAT_SPECS.items()}


def format_spec(name: str) -> Format:
    """The format called `name`; a ValidationError naming the choices for any other name."""
    spec = FORMAT_SPECS.get(name)
    if spec is None:
        raise ValidationError({"format": f"Format is one of {', '.join(FORMATS)}."})
    return spec
