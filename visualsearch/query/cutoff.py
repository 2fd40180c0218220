"""Relevance cut-off: end a ranked result list where its scores fall away.

One fixed similarity threshold does not fit every query (a product with many look-alikes
scores 0.9 deep into its list, an odd one 0.6 at the top), so the cut-off is relative to
each list. Three rules, each over the list's own scores (``similarity``, else ``score``):

* ``ratio`` (value in (0, 1]): keep the results scoring at least ``value`` times the top
  hit's score. Depends on the top hit only, so a longer ``limit`` only appends results.
* ``gap`` (value > 0): cut at the largest drop between neighbours, when that drop is at
  least ``value`` standard deviations of the list's scores; a list without such a drop is
  kept whole.
* ``stddev`` (value >= 0): keep the results within ``value`` standard deviations (of the
  list's scores) of the top hit.

Every rule keeps at least ``min_results`` results (3 by default, at least 1), so a list that
is not empty never comes back empty. The ``RELEVANCE_CUTOFF`` setting (``None``: off) and the
API's ``cutoff`` parameter name a rule in the forms :func:`parse_cutoff` reads.
:data:`RECOMMENDED` (ratio 0.94, at least 3 results) was chosen with ``bench/cutoff.py`` on
the dev catalog's EfficientNet image similarities (docs/performance.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured

from visualsearch.conf import visualsearch_settings

T = TypeVar("T")

RULES = ("ratio", "gap", "stddev")
#: Results every rule keeps at least, unless told otherwise: a near-duplicate top hit (a
#: product in another colour) must not leave a lone result on the page.
MIN_RESULTS = 3
#: What the API's ``cutoff`` parameter and the setting's string form accept, for messages.
FORMS = "a ratio such as 0.9, rule:value (ratio:0.9, gap:2, stddev:1.5), on or off"


class InvalidCutoff(ValueError):
    """A cut-off given in a form :func:`parse_cutoff` does not read; the message says why."""


@dataclass(frozen=True)
class Cutoff:
    """A cut-off rule and its parameters; :meth:`apply` cuts a ranked list."""

    rule: str = "ratio"
    value: float = 0.94
    min_results: int = MIN_RESULTS

    def __post_init__(self) -> None:
        _check(self.rule, self.value, self.min_results)

    def apply(self, results: Sequence[T], key: Callable[[T], float] | None = None) -> list[T]:
        """The prefix of ``results`` (best first) this rule keeps."""
        return relevance_cutoff(
            results, self.rule, self.value, min_results=self.min_results, key=key
        )

    def __str__(self) -> str:
        return f"{self.rule}:{self.value:g}"


def result_score(result: Any) -> float:
    """A result's score: its ``similarity`` (k-NN results), else its ``score`` (fused
    results), read as an attribute or a mapping key."""
    for name in ("similarity", "score"):
        value = result.get(name) if isinstance(result, Mapping) else getattr(result, name, None)
        if value is not None:
            return float(value)
    raise TypeError(f"{result!r} has neither a similarity nor a score to cut by.")


def relevance_cutoff(
    results: Sequence[T],
    rule: str = "ratio",
    value: float = 0.94,
    *,
    min_results: int = MIN_RESULTS,
    key: Callable[[T], float] | None = None,
) -> list[T]:
    """The prefix of the ranked ``results`` (best first) that ``rule`` keeps (module doc).

    ``key`` reads a result's score (default :func:`result_score`). Keeps at least
    ``min_results`` results, and never returns an empty list for a non-empty input.
    Raises :class:`InvalidCutoff` for an unknown rule or a value out of its range.
    """
    _check(rule, value, min_results)
    results = list(results)
    if len(results) <= min_results:
        return results
    scores = [float((key or result_score)(result)) for result in results]
    keep = {"ratio": _ratio, "gap": _gap, "stddev": _stddev}[rule](scores, value, min_results)
    return results[: max(keep, min_results, 1)]


def _ratio(scores: list[float], value: float, min_results: int) -> int:
    top = scores[0]
    # top * value for a positive top; below a negative one by the same share of its size.
    threshold = top - (1.0 - value) * abs(top)
    return _count_while(scores, threshold)


def _gap(scores: list[float], value: float, min_results: int) -> int:
    spread = _std(scores)
    drops = [(scores[i - 1] - scores[i], i) for i in range(min_results, len(scores))]
    if spread <= 0.0 or not drops:
        return len(scores)
    # The largest drop, the earliest of equal ones (max keeps the first of ties on -i).
    drop, position = max(drops, key=lambda item: (item[0], -item[1]))
    return position if drop >= value * spread else len(scores)


def _stddev(scores: list[float], value: float, min_results: int) -> int:
    return _count_while(scores, scores[0] - value * _std(scores))


def _count_while(scores: list[float], threshold: float) -> int:
    """How many scores, from the first, are at least ``threshold`` (float noise allowed)."""
    count = 0
    for score in scores:
        if score < threshold - 1e-12:
            break
        count += 1
    return count


def _std(scores: list[float]) -> float:
    mean = sum(scores) / len(scores)
    return math.sqrt(sum((score - mean) ** 2 for score in scores) / len(scores))


def _check(rule: str, value: float, min_results: int) -> None:
    if rule not in RULES:
        raise InvalidCutoff(
            f"Unknown cut-off rule {str(rule)[:30]!r}: choose one of {', '.join(RULES)}."
        )
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidCutoff(f"The {rule} cut-off needs a finite number, got {value!r}.")
    if rule == "ratio" and not 0.0 < value <= 1.0:
        raise InvalidCutoff(f"A ratio cut-off is a number above 0 and at most 1, got {value:g}.")
    if rule == "gap" and value <= 0.0:
        raise InvalidCutoff(
            f"A gap cut-off is a number of standard deviations above 0, got {value:g}."
        )
    if rule == "stddev" and value < 0.0:
        raise InvalidCutoff(
            f"A stddev cut-off is a number of standard deviations, at least 0, got {value:g}."
        )
    if isinstance(min_results, bool) or not isinstance(min_results, int) or min_results < 1:
        raise InvalidCutoff(
            f"min_results must be a whole number of at least 1, got {min_results!r}."
        )


#: The measured recommendation (bench/cutoff.py): the most precision gained over a fixed
#: ``limit`` of the same mean length, for EfficientNet image similarities.
RECOMMENDED = Cutoff("ratio", 0.94, MIN_RESULTS)


def parse_cutoff(value: Any, *, min_results: int = MIN_RESULTS) -> Cutoff | None:
    """A :class:`Cutoff` from one of the forms the setting and the API accept; ``None`` for off.

    ``None``, ``"off"`` (or ``"none"``): no cut-off. ``"on"``: :data:`RECOMMENDED`. A number or
    numeric string: the ratio rule with that ratio. ``"rule:value"`` (``"gap:2"``). A dict
    ``{"rule": …, "value": …, "min_results": …}`` (``rule`` defaults to ratio, ``min_results``
    to the argument). Raises :class:`InvalidCutoff` saying what is wrong.
    """
    word = value.strip().lower() if isinstance(value, str) else None
    if value is None or word in ("off", "none"):
        return None
    if word == "on":
        return RECOMMENDED
    if isinstance(value, Mapping):
        unknown = set(value) - {"rule", "value", "min_results"}
        if unknown or "value" not in value:
            raise InvalidCutoff(
                'A cut-off dict has the keys "rule", "value" (required) and "min_results", '
                f"got {sorted(map(str, value))}."
            )
        return Cutoff(
            value.get("rule", "ratio"), value["value"], value.get("min_results", min_results)
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Cutoff("ratio", value, min_results)
    if not isinstance(value, str):
        raise InvalidCutoff(f"A cut-off is {FORMS}; got {value!r}.")
    rule, _, number = value.strip().rpartition(":")
    try:
        parsed = float(number)
    except ValueError:
        raise InvalidCutoff(f"A cut-off is {FORMS}; got {value[:50]!r}.") from None
    return Cutoff(rule.strip().lower() or "ratio", parsed, min_results)


def configured_cutoff() -> Cutoff | None:
    """The ``RELEVANCE_CUTOFF`` setting as a :class:`Cutoff` (``None``: off);
    ``ImproperlyConfigured`` naming the key when it does not parse."""
    setting = visualsearch_settings.RELEVANCE_CUTOFF
    try:
        return parse_cutoff(setting)
    except InvalidCutoff as exc:
        raise ImproperlyConfigured(
            f"VISUALSEARCH['RELEVANCE_CUTOFF'] = {setting!r} is invalid: {exc} Use None (off), "
            f'{FORMS}, or {{"rule": …, "value": …, "min_results": …}}.'
        ) from None


def resolve_cutoff(value: Any) -> Cutoff | None:
    """The cut-off a caller (an API request, a template tag) asked for: ``value`` parsed (see
    :func:`parse_cutoff`) with the setting's ``min_results``, ``"on"`` being the setting when
    it is on; the ``RELEVANCE_CUTOFF`` setting when ``value`` is ``None`` or blank. Raises
    :class:`InvalidCutoff` for a bad ``value`` (``ImproperlyConfigured`` for a bad setting)."""
    default = configured_cutoff()
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if default is not None and isinstance(value, str) and value.strip().lower() == "on":
        return default
    return parse_cutoff(value, min_results=default.min_results if default else MIN_RESULTS)
