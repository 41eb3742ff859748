"""Fixtures of the labeling tests: annotators, an admin, a project."""

from __future__ import annotations

import pytest

from tests.labeling.factories import make_comparison, make_project, make_user  # noqa: F401 - tests/exports imports them here


@pytest.fixture
def annotator(db):
    return make_user("ann1")


@pytest.fixture
def annotator2(db):
    return make_user("ann2")


@pytest.fixture
def admin_user(db):
    return make_user("boss", role="admin")


@pytest.fixture
def project(db):
    return make_project()
