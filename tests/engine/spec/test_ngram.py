"""Prompt-lookup proposals: the continuation of the most recent earlier match."""

from engine.spec.ngram import NgramSpeculator


def test_proposes_the_continuation_of_the_latest_match():
    spec = NgramSpeculator(min_n=2, max_n=4)
    ids = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3, 4, 6, 7, 1, 2, 3, 4]
    # [1, 2, 3, 4] occurred twice before; the most recent one continues with 6, 7
    assert spec.propose(ids, 3) == [6, 7, 1]


def test_longest_match_wins_over_a_more_recent_shorter_one():
    spec = NgramSpeculator(min_n=2, max_n=4)
    ids = [5, 6, 7, 8, 10, 11, 7, 8, 20, 5, 6, 7, 8]
    assert spec.propose(ids, 2) == [10, 11]


def test_no_match_and_no_room_give_nothing():
    spec = NgramSpeculator(min_n=2, max_n=4)
    assert spec.propose([1, 2, 3, 4, 5], 8) == []
    assert spec.propose([1, 2, 1, 2], 0) == []
    assert spec.propose([7], 4) == []


def test_a_short_match_proposes_a_short_draft():
    spec = NgramSpeculator(min_n=2, max_n=4)
    ids = [1, 2] + list(range(100, 120)) + [1, 2]
    assert spec.propose(ids, 16) == list(range(100, 108))  # two-token evidence: at most 8
