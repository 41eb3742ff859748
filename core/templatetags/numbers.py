"""Numbers as people write them: 2e-5, 0.6931, 1.23e6 — not 2.000000E-5 or 0.000 (static/js/numbers.js agrees)."""

from __future__ import annotations

import math

from django import template

register = template.Library()


def human_number(value) -> str:
    """Four significant digits (whole numbers from 1,000); scientific notation, trimmed, below 0.001 and from 100,000 on."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 100_000 else human_number(float(value))
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if abs(value) >= 1000:
        return str(round(value))
    return f"{value:.4g}"


register.filter("human_number", human_number)
