"""Template helpers: safe markdown (raw HTML escaped, unsafe link schemes refused by markdown-it), percentages."""

from __future__ import annotations

from functools import lru_cache

from django import template
from django.utils.safestring import mark_safe
from markdown_it import MarkdownIt

register = template.Library()


@lru_cache(maxsize=1)
def _renderer() -> MarkdownIt:
    # html=False: any HTML in a response is shown as text. markdown-it's validateLink refuses javascript:,
    # vbscript:, file: and non-image data: URLs.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
        ["table", "strikethrough"]
    )


@register.filter(name="markdown")
def markdown(text: str) -> str:
    # Safe: the renderer has html=False, so raw HTML in the text comes out escaped.
    return mark_safe(_renderer().render(text or ""))


@register.filter(name="percent")
def percent(value) -> str:
    if value is None or value == "":
        return "–"
    return f"{100 * value:.1f}%"


@register.filter(name="number")
def number(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "–"
    return f"{value:.{digits}f}"


# Answers longer than this start collapsed to a screenful (a button shows all): a 1,700 px answer must not push
# its neighbours and the rank inputs out of reach.
LONG_ANSWER_CHARS = 1200


@register.filter(name="long_answer")
def long_answer(length: int) -> bool:
    return length > LONG_ANSWER_CHARS
