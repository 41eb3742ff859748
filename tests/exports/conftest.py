"""Fixtures of the export tests (their factories are in tests/exports/factories.py)."""

from __future__ import annotations

import pytest

from tests.exports.factories import adjudicate, make_comparison, make_project, make_user, vote


@pytest.fixture
def scenario(db):
    """A pairwise project with every case the filters care about.

    c_major: 2 of 3 prefer A (agreement 1/3) · c_tie: 1–1 (consensus tie) · c_adj: votes say A, the admin says B ·
    c_flag: one vote flagged unsafe · gold: u1 right, u2 wrong (u1 qualified, u2 not, u3 no evidence).
    """
    project = make_project("exp", overlap=3, trust_threshold=0.6)
    u1, u2, u3 = (make_user(f"exp{i}") for i in (1, 2, 3))
    admin = make_user("exp-admin", role="admin")
    c_major = make_comparison(project, text="Which is better, A or B?")
    c_tie = make_comparison(project)
    c_adj = make_comparison(project)
    c_flag = make_comparison(project)
    gold = make_comparison(project, is_gold=True)
    vote(c_major, u1, [1, 2])
    vote(c_major, u2, [1, 2])
    vote(c_major, u3, [2, 1])
    vote(c_tie, u1, [1, 2])
    vote(c_tie, u2, [2, 1])
    vote(c_adj, u1, [1, 2])
    vote(c_adj, u2, [1, 2])
    adjudicate(c_adj, admin, [2, 1])
    vote(c_flag, u1, [1, 2], flags=["unsafe"])
    vote(c_flag, u2, [1, 2])
    vote(gold, u1, [1, 2])
    vote(gold, u2, [2, 1])
    return {
        "project": project,
        "users": (u1, u2, u3),
        "admin": admin,
        "c_major": c_major,
        "c_tie": c_tie,
        "c_adj": c_adj,
        "c_flag": c_flag,
        "gold": gold,
    }
