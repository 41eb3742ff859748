"""The preference selector: judgements, aggregation, filters, formats, hashing, counts."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from exports.filters import PreferenceFilters
from exports.hashing import content_hash
from exports.selectors import iter_preference_rows, preference_counts
from labeling.pseudonyms import annotator_pseudonym

from .factories import make_comparison, make_project, make_user, response_ids, vote

pytestmark = pytest.mark.django_db


def rows(project, fmt="pairwise", **filters):
    return list(iter_preference_rows(project=project, filters=PreferenceFilters(**filters), format=fmt))


def test_majority_pairs_prefer_adjudication_drop_ties_and_flagged(scenario):
    got = rows(scenario["project"])
    by_comparison = {row["comparison_id"]: row for row in got}
    assert set(by_comparison) == {scenario["c_major"].id, scenario["c_adj"].id}  # tie and flagged: no pair
    major = by_comparison[scenario["c_major"].id]
    a, b = response_ids(scenario["c_major"])
    assert (major["chosen_id"], major["rejected_id"]) == (a, b)
    assert major["prompt"] == [{"role": "user", "content": "Which is better, A or B?"}]
    assert major["chosen"][0]["role"] == "assistant" and major["chosen"][0]["content"].startswith("Answer 0")
    assert (major["source"], major["votes"], major["margin"]) == ("consensus", 3, 1.0)
    assert major["agreement"] == pytest.approx(1 / 3, abs=1e-6)
    adjudicated = by_comparison[scenario["c_adj"].id]
    a, b = response_ids(scenario["c_adj"])
    assert (adjudicated["chosen_id"], adjudicated["source"]) == (b, "adjudication")
    # Gold comparisons measure annotators: never a training pair.
    assert scenario["gold"].id not in by_comparison

    with_flagged = rows(scenario["project"], exclude_flagged=False)
    assert scenario["c_flag"].id in {row["comparison_id"] for row in with_flagged}


def test_all_votes_with_pseudonyms(scenario):
    got = rows(scenario["project"], aggregation="all")
    per = {}
    for row in got:
        per.setdefault(row["comparison_id"], []).append(row)
    assert len(per[scenario["c_major"].id]) == 3
    assert len(per[scenario["c_tie"].id]) == 2  # two single votes, opposite directions
    assert len(per[scenario["c_adj"].id]) == 1  # the adjudication replaces the votes
    u1 = scenario["users"][0]
    pseudonyms = {row["annotator"] for row in per[scenario["c_major"].id]}
    assert annotator_pseudonym(u1.pk) in pseudonyms
    assert all(p.startswith("a_") and str(u1.pk) != p for p in pseudonyms)
    assert annotator_pseudonym(u1.pk) == annotator_pseudonym(u1.pk) != annotator_pseudonym(u1.pk + 1)


def test_min_agreement_gold_qualified_adjudicated_only_and_dates(scenario):
    project = scenario["project"]
    ids = lambda got: {row["comparison_id"] for row in got}  # noqa: E731
    # c_major agrees 1/3: dropped at 0.5; the adjudicated comparison always passes.
    assert ids(rows(project, min_agreement=0.5)) == {scenario["c_adj"].id}
    assert ids(rows(project, adjudicated_only=True)) == {scenario["c_adj"].id}
    # Only u1 is gold-qualified: c_major then has one vote (A), c_tie too (A).
    qualified = rows(project, gold_qualified_only=True)
    assert {r["comparison_id"]: r["votes"] for r in qualified if r["source"] == "consensus"} == {
        scenario["c_major"].id: 1,
        scenario["c_tie"].id: 1,
    }
    tomorrow = timezone.localdate() + timedelta(days=1)
    assert rows(project, date_from=tomorrow) == []
    assert ids(rows(project, date_to=timezone.localdate())) == {scenario["c_major"].id, scenario["c_adj"].id}


def test_ranking_sft_kto_raw_formats():
    project = make_project("k3", mode="ranking", k=3, overlap=2)
    u1, u2 = make_user("r1"), make_user("r2")
    c = make_comparison(project, k=3, text="Rank these")
    x, y, z = response_ids(c)
    vote(c, u1, [1, 2, 2])  # x best, y = z tie
    vote(c, u2, [1, 2, 3])
    ranking = rows(project, "ranking")
    assert len(ranking) == 1 and ranking[0]["response_ids"] == [x, y, z]
    assert ranking[0]["ranks"] == [1, 2, 3] and ranking[0]["votes"] == 2  # totals 2, 4, 5
    pairwise = rows(project, "pairwise", aggregation="all")
    # u1 gives x>y, x>z (y=z tie: no pair); u2 gives 3 pairs.
    assert len(pairwise) == 5
    assert {(r["chosen_id"], r["rejected_id"], r["margin"]) for r in pairwise} >= {(x, z, 2.0), (x, y, 1.0)}

    sft = rows(project, "sft")
    assert len(sft) == 1
    assert sft[0]["messages"][-1]["role"] == "assistant"
    assert sft[0]["messages"][-1]["content"].startswith("Answer 0 to")
    assert sft[0]["response_id"] == x and sft[0]["messages"][0] == {"role": "user", "content": "Rank these"}
    kto = rows(project, "kto")
    assert {(r["response_id"], r["label"]) for r in kto} == {(x, True), (z, False)}  # y: net 0
    assert all(r["completion"][0]["role"] == "assistant" for r in kto)

    raw = rows(project, "raw")
    assert [r["annotator"] for r in raw] == [annotator_pseudonym(u1.pk), annotator_pseudonym(u2.pk)]
    assert raw[0]["ranks"] == [1, 2, 2] and raw[0]["seconds_spent"] == 12.5
    assert raw[0]["created_at"].endswith("+00:00") and raw[0]["flags"] == [] and raw[0]["is_gold"] is False


def test_raw_includes_gold_and_flags_when_asked(scenario):
    raw = rows(scenario["project"], "raw", exclude_flagged=False)
    assert len(raw) == 11
    gold = [r for r in raw if r["is_gold"]]
    assert len(gold) == 2 and gold[0]["expected_ranks"] == [1, 2]
    assert any(r["flags"] == ["unsafe"] for r in raw)
    adj = [r for r in raw if r["comparison_id"] == scenario["c_adj"].id]
    assert adj[0]["adjudicated_ranks"] == [2, 1]
    assert "exp1" not in str(raw)  # usernames never leave


def test_content_hash_is_stable_and_tracks_data(scenario):
    project = scenario["project"]
    first = content_hash(rows(project))
    assert first == content_hash(rows(project)) and len(first) == 64
    # Chunk boundaries do not change the rows.
    assert first == content_hash(
        iter_preference_rows(project=project, filters=PreferenceFilters(), format="pairwise", chunk_size=1)
    )
    assert first != content_hash(rows(project, aggregation="all"))
    vote(make_comparison(project), scenario["users"][0], [2, 1])
    assert first != content_hash(rows(project))


def test_filters_round_trip_and_validation():
    filters = PreferenceFilters(
        date_from=date(2025, 1, 1), date_to="2025-02-01", min_agreement=0.7, aggregation="all"
    )
    data = filters.to_dict()
    assert data["date_from"] == "2025-01-01" and data["date_to"] == "2025-02-01"
    assert PreferenceFilters.from_dict(data) == filters
    assert PreferenceFilters.from_dict({}) == PreferenceFilters()
    for bad in (
        {"min_agreement": 1.5},
        {"aggregation": "mean"},
        {"date_from": "yesterday"},
        {"date_from": "2025-02-02", "date_to": "2025-02-01"},
        {"colour": "red"},
        {"exclude_flagged": "yes"},
    ):
        with pytest.raises(ValidationError):
            PreferenceFilters.from_dict(bad)
    with pytest.raises(ValidationError):
        list(iter_preference_rows(project=None, format="csv"))


def test_preference_counts(scenario):
    counts = preference_counts(project=scenario["project"])
    # c_major, c_tie, c_adj (c_flag excluded, gold never counted).
    assert counts == {"comparisons": 3, "adjudicated": 1, "votes": 7, "annotators": 3, "max_pairs": 3}
    assert (
        preference_counts(project=scenario["project"], filters=PreferenceFilters(aggregation="all"))[
            "max_pairs"
        ]
        == 1 + 5
    )
    assert (
        preference_counts(project=scenario["project"], filters=PreferenceFilters(adjudicated_only=True))[
            "comparisons"
        ]
        == 1
    )
    assert len(rows(scenario["project"])) <= counts["max_pairs"]
