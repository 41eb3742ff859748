import random

import pytest

from loop.oracles import OracleError, oracle_ranks


def test_keyword_shorter_longer_and_ties():
    responses = [(1, "Thanks, here it is."), (2, "no"), (3, "Yes, thanks!")]
    assert oracle_ranks(rule="keyword:thanks", prompt="", responses=responses, allow_ties=True) == {
        "1": 1,
        "2": 2,
        "3": 1,
    }
    assert oracle_ranks(rule="shorter", prompt="", responses=responses, allow_ties=True) == {
        "1": 3,
        "2": 1,
        "3": 2,
    }
    assert oracle_ranks(rule="longer", prompt="", responses=responses, allow_ties=True)["1"] == 1
    strict = oracle_ranks(
        rule="keyword:thanks", prompt="", responses=responses, allow_ties=False, rng=random.Random(0)
    )
    assert sorted(strict.values()) == [1, 2, 3] and strict["2"] == 3


@pytest.mark.parametrize(
    "prompt, good", [("What is 12 plus 7?", "It is 19."), ("compute 6 * 7", "6*7 = 42"), ("9 - 11", "-2")]
)
def test_arithmetic_prefers_the_correct_number(prompt, good):
    ranks = oracle_ranks(
        rule="arithmetic", prompt=prompt, responses=[(1, good), (2, "It is 5.")], allow_ties=True
    )
    assert ranks == {"1": 1, "2": 2}


def test_noise_sometimes_randomises_and_unknown_rules_are_rejected():
    rng = random.Random(3)
    responses = [(1, "thanks"), (2, "no")]
    flips = sum(
        oracle_ranks(
            rule="keyword:thanks", prompt="", responses=responses, allow_ties=False, noise=0.5, rng=rng
        )["1"]
        == 2
        for _ in range(400)
    )
    assert 60 < flips < 140  # half the rankings are random, half of those put the keyword second
    with pytest.raises(OracleError, match="unknown oracle"):
        oracle_ranks(rule="eval:1+1", prompt="", responses=responses, allow_ties=True)
    with pytest.raises(OracleError, match="needs a word"):
        oracle_ranks(rule="keyword:", prompt="", responses=responses, allow_ties=True)
