"""Rule-based rewards: each rule scores what it promises; invalid specs fail with an error naming rule and field."""

from __future__ import annotations

import pytest

from training.engine.reward_rules import (
    JsonRule,
    RuleReward,
    RuleSpecError,
    parse_rule,
    parse_rules,
    rule_to_dict,
)


def score(spec: dict, completion: str, row: dict | None = None) -> float:
    return parse_rule(spec).score(completion, row or {})


def test_keyword_rule_modes():
    keywords = {"kind": "keyword", "keywords": ["cat", "dog"]}
    assert score(keywords, "A Cat sat.") == 1.0  # case-insensitive by default
    assert score({**keywords, "case_sensitive": True}, "A Cat sat.") == 0.0
    assert score({**keywords, "match": "all"}, "cat only") == 0.0
    assert score({**keywords, "match": "all"}, "cat and dog") == 1.0
    assert score({**keywords, "match": "fraction"}, "cat only") == 0.5
    assert score({**keywords, "match": "count", "max_count": 4}, "cat cat dog") == 0.75
    assert score({**keywords, "match": "count", "max_count": 2}, "cat cat dog") == 1.0  # capped
    assert score({**keywords, "whole_word": True}, "concatenate dogma") == 0.0
    assert score(keywords, "concatenate") == 1.0


def test_regex_rule():
    assert score({"kind": "regex", "pattern": r"\d{3}"}, "call 555 now") == 1.0
    assert score({"kind": "regex", "pattern": r"\d{3}", "full_match": True}, "call 555 now") == 0.0
    assert score({"kind": "regex", "pattern": r"\d{3}", "full_match": True}, " 555\n") == 1.0
    assert score({"kind": "regex", "pattern": "^yes", "ignore_case": True}, "YES sir") == 1.0
    assert score({"kind": "regex", "pattern": "^yes$", "multiline": True}, "well\nyes\nok") == 1.0


def test_length_rule_is_one_at_target_and_falls_linearly():
    chars = {"kind": "length", "target": 10, "tolerance": 5}
    assert score(chars, "x" * 10) == 1.0
    assert score(chars, "x" * 12) == pytest.approx(0.6)
    assert score(chars, "x" * 7) == pytest.approx(0.4)
    assert score(chars, "x" * 30) == 0.0
    assert (
        score({"kind": "length", "target": 3, "tolerance": 2, "unit": "words"}, "one two three four") == 0.5
    )


def test_json_rule():
    assert score({"kind": "json"}, '{"a": 1}') == 1.0
    assert score({"kind": "json"}, "[1, 2") == 0.0
    assert score({"kind": "json"}, 'Here:\n```json\n{"a": 1}\n```') == 1.0
    assert score({"kind": "json", "allow_code_fence": False}, 'Here:\n```json\n{"a": 1}\n```') == 0.0
    assert score({"kind": "json", "required_keys": ["a", "b"]}, '{"a": 1}') == 0.0
    assert score({"kind": "json", "required_keys": ["a", "b"]}, '{"a": 1, "b": null}') == 1.0
    assert score({"kind": "json", "required_keys": ["a"]}, "[1]") == 0.0


def test_reference_exact_rule_normalises_and_can_extract_the_answer():
    row = {"reference": "Paris"}
    assert score({"kind": "reference_exact"}, "  paris ", row) == 1.0
    assert score({"kind": "reference_exact", "case_sensitive": True}, "paris", row) == 0.0
    assert score({"kind": "reference_exact"}, "It is Paris", row) == 0.0
    extract = {"kind": "reference_exact", "answer_pattern": r"answer:\s*(.+)"}
    assert (
        score(extract, "Let me think.\nAnswer: Paris", {"reference": "Paris"}) == 0.0
    )  # pattern is case-sensitive
    assert score(extract, "Let me think.\nanswer: Paris", row) == 1.0
    assert score(extract, "no marker here", row) == 0.0
    assert score({"kind": "reference_exact", "field": "answer"}, "42", {"answer": 42}) == 1.0


def test_reference_regex_rule_reads_the_pattern_from_the_row():
    rule = {"kind": "reference_regex"}
    assert score(rule, "The total is 1,024.", {"reference": r"1,?024"}) == 1.0
    assert score(rule, "The total is 1000.", {"reference": r"1,?024"}) == 0.0
    assert score({**rule, "full_match": True}, "1024", {"reference": r"1,?024"}) == 1.0
    with pytest.raises(RuleSpecError, match="invalid regular expression"):
        score(rule, "x", {"reference": "("})
    with pytest.raises(RuleSpecError, match="has no 'reference' value"):
        score(rule, "x", {"other": "y"})


def test_rule_reward_is_the_weighted_sum():
    reward = RuleReward(
        [
            {"kind": "keyword", "keywords": ["please"], "weight": 2.0},
            {"kind": "keyword", "keywords": ["stupid"], "weight": -3.0},  # a negative weight is a penalty
            {"kind": "json"},
        ]
    )
    assert reward.score(["please", "stupid", '"please"'], [{}, {}, {}]) == [2.0, -3.0, 3.0]
    with pytest.raises(ValueError, match="2 completions but 1 rows"):
        reward.score(["a", "b"], [{}])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "python", "code": "import os"}, "unknown kind 'python'"),
        ({"keywords": ["a"]}, "unknown kind None"),
        ({"kind": "keyword"}, r"missing required field\(s\) \['keywords'\]"),
        ({"kind": "keyword", "keywords": "cat"}, "'keywords' must be a list of strings"),
        ({"kind": "keyword", "keywords": []}, "non-empty list"),
        ({"kind": "keyword", "keywords": ["a"], "match": "most"}, "'match' must be one of"),
        ({"kind": "keyword", "keywords": ["a"], "weight": "high"}, "'weight' must be a number"),
        ({"kind": "regex", "pattern": "(unclosed"}, "invalid regular expression"),
        ({"kind": "regex", "pattern": "a" * 501}, "longer than 500"),
        ({"kind": "regex", "pattern": "a", "ignore_case": "yes"}, "'ignore_case' must be true or false"),
        ({"kind": "length", "target": 10, "tolerance": 0}, "'tolerance' must be >= 1"),
        ({"kind": "length", "target": 10.5, "tolerance": 3}, "'target' must be an integer"),
        ({"kind": "length", "target": 10, "tolerance": 3, "unit": "tokens"}, "'unit' must be one of"),
        ({"kind": "json", "exec": "x"}, r"unknown field\(s\) \['exec'\]"),
        ({"kind": "reference_exact", "answer_pattern": "no group"}, "exactly one capture group"),
        ("keyword", "expected a mapping"),
    ],
)
def test_invalid_specs_fail_with_a_clear_error(spec, message):
    with pytest.raises(RuleSpecError, match=message):
        parse_rules([spec])


def test_errors_name_the_position_of_the_bad_rule():
    with pytest.raises(RuleSpecError, match=r"rule #1 \(length\)"):
        parse_rules([{"kind": "json"}, {"kind": "length", "target": 5}])
    with pytest.raises(RuleSpecError, match="list of rule specs"):
        parse_rules({"kind": "json"})


def test_rules_round_trip_through_plain_dicts():
    specs = [
        {"kind": "keyword", "keywords": ["a", "b"], "match": "all"},
        {"kind": "json", "required_keys": ["x"], "weight": 0.5},
        {"kind": "reference_regex", "field": "pattern"},
    ]
    rules = parse_rules(specs)
    assert parse_rules([rule_to_dict(rule) for rule in rules]) == rules
    assert isinstance(rules[1], JsonRule) and rules[1].required_keys == ("x",)
