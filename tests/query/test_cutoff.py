"""The relevance cut-off (visualsearch.query.cutoff): rules, parsing, the setting's check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.core.exceptions import ImproperlyConfigured

from visualsearch.checks import check_relevance_cutoff
from visualsearch.query.cutoff import (
    MIN_RESULTS,
    RECOMMENDED,
    RULES,
    Cutoff,
    InvalidCutoff,
    configured_cutoff,
    parse_cutoff,
    relevance_cutoff,
    resolve_cutoff,
    result_score,
)

SHARP = [0.95, 0.94, 0.93, 0.60, 0.58, 0.55, 0.52, 0.50]
FLAT = [0.90 - 0.002 * i for i in range(20)]  # 0.900 down to 0.862, no drop anywhere
ANY_RULE = [("ratio", 0.9), ("gap", 1.0), ("stddev", 1.5)]


def products(scores: list[float]) -> list[SimpleNamespace]:
    """k-NN results as the query functions return them: objects with ``similarity``."""
    return [SimpleNamespace(pk=i, similarity=score) for i, score in enumerate(scores)]


@pytest.mark.parametrize("rule, value", ANY_RULE)
def test_a_sharp_drop_ends_the_list(rule, value):
    kept = relevance_cutoff(products(SHARP), rule, value, min_results=1)
    assert [p.similarity for p in kept] == SHARP[:3]


@pytest.mark.parametrize("rule, value", [("ratio", 0.94), ("gap", 1.0), ("gap", 2.0)])
def test_a_flat_list_is_kept_whole(rule, value):
    results = products(FLAT)
    assert relevance_cutoff(results, rule, value, min_results=1) == results


def test_the_ratio_rule_is_relative_to_each_lists_top_hit():
    # The same absolute scores are kept in one list and cut in another.
    high = relevance_cutoff(products([0.95, 0.80, 0.79]), "ratio", 0.9, min_results=1)
    low = relevance_cutoff(products([0.80, 0.79, 0.60]), "ratio", 0.9, min_results=1)
    assert [p.similarity for p in high] == [0.95]
    assert [p.similarity for p in low] == [0.80, 0.79]


def test_stddev_keeps_what_is_within_so_many_deviations_of_the_top():
    scores = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]  # standard deviation 0.1708
    kept = relevance_cutoff(scores, "stddev", 1.0, min_results=1, key=float)
    assert kept == [1.0, 0.9]
    assert relevance_cutoff([0.7] * 5, "stddev", 0.0, min_results=1, key=float) == [0.7] * 5


def test_gap_takes_the_largest_drop_and_only_a_sharp_one():
    scores = [0.9, 0.85, 0.84, 0.6, 0.59, 0.3, 0.29]  # drops of 0.24 and 0.29
    assert relevance_cutoff(scores, "gap", 1.0, min_results=1, key=float) == scores[:5]
    assert relevance_cutoff(scores, "gap", 5.0, min_results=1, key=float) == scores


@pytest.mark.parametrize("rule, value", [*ANY_RULE, ("ratio", 1.0)])
def test_one_result_and_no_results(rule, value):
    one = products([0.4])
    assert relevance_cutoff(one, rule, value, min_results=1) == one
    assert relevance_cutoff([], rule, value, min_results=1) == []
    assert relevance_cutoff([], rule, value) == []


@pytest.mark.parametrize(
    "scores",
    [[0.9, 0.1], [0.99, 0.2, 0.1], [-0.2, -0.9], [0.0, -0.5], [0.5, 0.5, -1.0]],
)
@pytest.mark.parametrize("rule, value", [*ANY_RULE, ("ratio", 1.0), ("stddev", 0.0)])
def test_never_empty_when_there_are_results(scores, rule, value):
    kept = relevance_cutoff(scores, rule, value, min_results=1, key=float)
    assert 1 <= len(kept) <= len(scores)
    assert kept == scores[: len(kept)]  # always a prefix, in order


def test_min_results_are_kept_whatever_the_scores():
    assert MIN_RESULTS == 3
    results = products([0.99, 0.3, 0.2, 0.1, 0.05])
    assert relevance_cutoff(results, "ratio", 0.9) == results[:3]  # the default floor
    assert relevance_cutoff(results, "ratio", 0.9, min_results=1) == results[:1]
    assert relevance_cutoff(results, "ratio", 0.9, min_results=4) == results[:4]
    # gap only looks at drops after the floor: 0.1 -> 0.05 is no sharp drop, all are kept
    assert relevance_cutoff(results, "gap", 1.0, min_results=4) == results
    assert relevance_cutoff(results[:2], "ratio", 0.9) == results[:2]


def test_a_negative_top_hit_keeps_what_is_close_below_it():
    kept = relevance_cutoff([-0.2, -0.21, -0.5], "ratio", 0.9, min_results=1, key=float)
    assert kept == [-0.2, -0.21]


def test_the_ratio_rule_cuts_any_limit_at_the_same_place():
    scores = [0.95, 0.93, 0.91, 0.9, 0.86, 0.85, 0.7]
    whole = relevance_cutoff(scores, "ratio", 0.94, min_results=1, key=float)
    for limit in range(1, len(scores) + 1):
        shorter = relevance_cutoff(scores[:limit], "ratio", 0.94, min_results=1, key=float)
        assert shorter == whole[:limit]


def test_fused_results_and_mappings_are_read_by_score():
    fused = [
        SimpleNamespace(score=0.032),
        SimpleNamespace(score=0.031),
        SimpleNamespace(score=0.01),
    ]
    assert relevance_cutoff(fused, "ratio", 0.9, min_results=1) == fused[:2]
    rows = [{"similarity": 0.9}, {"similarity": 0.5}]
    assert relevance_cutoff(rows, "ratio", 0.9, min_results=1) == rows[:1]
    assert result_score(SimpleNamespace(similarity=0.7, score=0.01)) == 0.7
    with pytest.raises(TypeError, match="neither a similarity nor a score"):
        result_score(object())


def test_cutoff_objects_apply_their_rule():
    assert Cutoff("ratio", 0.9, 1).apply(products(SHARP)) == products(SHARP)[:3]
    assert str(Cutoff("gap", 2.0)) == "gap:2"
    assert RECOMMENDED == Cutoff("ratio", 0.94, 3)
    assert set(RULES) == {"ratio", "gap", "stddev"}


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("off", None),
        (" OFF ", None),
        ("none", None),
        ("on", RECOMMENDED),
        (0.8, Cutoff("ratio", 0.8, 3)),
        (1, Cutoff("ratio", 1.0, 3)),
        ("0.8", Cutoff("ratio", 0.8, 3)),
        ("ratio:0.9", Cutoff("ratio", 0.9, 3)),
        ("gap:2", Cutoff("gap", 2.0, 3)),
        ("Stddev: 1.5", Cutoff("stddev", 1.5, 3)),
        ({"value": 0.9}, Cutoff("ratio", 0.9, 3)),
        ({"rule": "gap", "value": 1.5, "min_results": 1}, Cutoff("gap", 1.5, 1)),
    ],
)
def test_parse_cutoff_forms(value, expected):
    assert parse_cutoff(value) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc", "A cut-off is a ratio"),
        ("", "A cut-off is a ratio"),
        ("ratio:", "A cut-off is a ratio"),
        ("0", "above 0 and at most 1"),
        ("1.5", "above 0 and at most 1"),
        ("-0.5", "above 0 and at most 1"),
        ("ratio:2", "above 0 and at most 1"),
        ("gap:0", "gap cut-off is a number of standard deviations above 0"),
        ("stddev:-1", "at least 0"),
        ("nan", "finite number"),
        ("inf", "finite number"),
        ("1e400", "finite number"),
        ("median:0.5", "Unknown cut-off rule 'median'"),
        (True, "A cut-off is a ratio"),
        ([0.9], "A cut-off is a ratio"),
        ({"value": 0.9, "floor": 2}, '"rule", "value" (required)'),
        ({"rule": "gap"}, '"rule", "value" (required)'),
        ({"value": "0.9"}, "finite number"),
        ({"value": 0.9, "min_results": 0}, "min_results must be a whole number of at least 1"),
        ({"value": 0.9, "min_results": 2.5}, "min_results must be a whole number"),
    ],
)
def test_bad_cutoffs_say_what_is_wrong(value, message):
    with pytest.raises(InvalidCutoff) as caught:
        parse_cutoff(value)
    assert message in str(caught.value)


def test_bad_rule_arguments_of_the_function_raise():
    with pytest.raises(InvalidCutoff, match="Unknown cut-off rule"):
        relevance_cutoff([0.9], "largest", 1.0, key=float)
    with pytest.raises(InvalidCutoff, match="min_results"):
        relevance_cutoff([0.9], "ratio", 0.9, min_results=0, key=float)


def test_the_setting_is_off_by_default_and_read_when_set(settings):
    assert configured_cutoff() is None
    assert resolve_cutoff(None) is None
    assert resolve_cutoff("0.9") == Cutoff("ratio", 0.9, 3)
    assert resolve_cutoff("on") == RECOMMENDED
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "RELEVANCE_CUTOFF": {"value": 0.8, "min_results": 5},
    }
    assert configured_cutoff() == Cutoff("ratio", 0.8, 5)
    assert (
        resolve_cutoff(None)
        == resolve_cutoff("")
        == resolve_cutoff("on")
        == Cutoff("ratio", 0.8, 5)
    )
    assert resolve_cutoff("gap:2") == Cutoff("gap", 2.0, 5)  # the setting's floor
    assert resolve_cutoff("off") is None


@pytest.mark.parametrize("value", ["always", 0, 1.5, {"rule": "gap", "value": -1}, ["ratio"]])
def test_a_bad_setting_is_improperly_configured_and_fails_the_check(settings, value):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "RELEVANCE_CUTOFF": value}
    with pytest.raises(ImproperlyConfigured, match=r"VISUALSEARCH\['RELEVANCE_CUTOFF'\]"):
        configured_cutoff()
    errors = check_relevance_cutoff()
    assert [error.id for error in errors] == ["visualsearch.E005"]
    assert "RELEVANCE_CUTOFF" in errors[0].msg and errors[0].hint


def test_a_good_setting_passes_the_check(settings):
    assert check_relevance_cutoff() == []
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "RELEVANCE_CUTOFF": "gap:2"}
    assert check_relevance_cutoff() == []
