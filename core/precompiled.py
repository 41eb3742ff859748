"""Precompiled SQL for the annotator hot path (lease, submit): statements written once as text, rows turned into
model instances the way the ORM would (same converters, fields not selected are deferred, so a save() can never
overwrite them). Building the equivalent ORM queries cost several times the CPU of running them."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from functools import cache

from django.conf import settings
from django.db import connection
from django.db.models import Model


def columns(model: type[Model], alias: str, prefix: str, *, only: tuple[str, ...] | None = None) -> str:
    """`alias."col" AS "prefixcol", …` for the model's concrete fields (or the attnames in `only`)."""
    return ", ".join(
        f'{alias}."{field.column}" AS "{prefix}{field.column}"' for field in _fields(model, only)
    )


def fetch(sql: str, params: list, *, prepare: bool = False) -> list[dict]:
    """Rows as {column name: value} dicts; with `prepare`, inside preparing()."""
    with preparing() if prepare else nullcontext(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@contextmanager
def preparing():
    """Statements run inside become server-side prepared statements on Postgres once one has run
    settings.DB_PREPARE_THRESHOLD times on this connection: later runs skip Postgres' parse and plan (the plan is
    generic, made once for any parameters). Only the annotator loop's lease, submission and token statements ask
    for it. Every other statement is planned for its own parameters each time: a generic plan made while a table
    was small (a new database) stays a sequential scan until the next ANALYZE, which made the htmx page's history
    counts quadratic in a benchmark. Each thread has its own connection, so the switch is the thread's alone."""
    threshold = settings.DB_PREPARE_THRESHOLD
    raw = connection.connection
    if threshold < 0 or connection.vendor != "postgresql" or raw is None:
        yield
        return
    raw.prepare_threshold = threshold
    try:
        yield
    finally:
        raw.prepare_threshold = None  # Django's default: nothing else is prepared


def instance(model: type[Model], row: dict, prefix: str, *, only: tuple[str, ...] | None = None):
    """The model instance for the columns of `row` that `columns(model, …, prefix, only=only)` selected."""
    names, values = [], []
    for field, converters in _converters(model, only, connection.vendor):
        value = row[f"{prefix}{field.column}"]
        for converter in converters:
            value = converter(value, field.get_col(model._meta.db_table), connection)
        names.append(field.attname)
        values.append(value)
    return model.from_db(connection.alias, names, values)


def _fields(model: type[Model], only: tuple[str, ...] | None):
    fields = model._meta.concrete_fields
    return fields if only is None else [field for field in fields if field.attname in only]


@cache
def _converters(model: type[Model], only: tuple[str, ...] | None, vendor: str):
    out = []
    for field in _fields(model, only):
        expression = field.get_col(model._meta.db_table)
        out.append(
            (field, connection.ops.get_db_converters(expression) + field.get_db_converters(connection))
        )
    return out
