"""Recommended for you: what a shopper viewed, kept in the session, turned into picks.

No login is needed: the ids of the ``RECOMMEND_HISTORY`` products viewed last live in the
shopper's session. The preference vector is the mean of those products' ready image vectors,
averaged by Postgres (``AVG(embedding)``, pgvector), counting only the products within
``RECOMMEND_FOCUS`` (cosine similarity) of the latest one, so that the red dresses viewed an
hour ago do not blur the shoes viewed now. ``k`` recommendations are:

* never the ``RECOMMEND_SKIP_SIMILAR`` products most similar to the latest viewed one, which
  the similar-products widget beside the recommendations shows already;
* ``k - round(k * RECOMMEND_EXPLORATION)`` products near the preference: the HNSW query of
  :func:`visualsearch.query.nearest_products` fetches a few times more than needed, and
  maximal marginal relevance keeps near ones that differ from each other (as much as
  ``RECOMMEND_DIVERSITY`` says). Never a product the
  shopper viewed, nor one of the ``RECOMMEND_SHOWN_MEMORY`` recommended to them last;
* the rest are exploration picks among the products not seen yet, so that a shopper who
  starts on red dresses still meets the yellow one: ``"diverse"``
  (``RECOMMEND_EXPLORATION_STRATEGY``) takes typical products of the groups that nothing
  viewed or shown stands for yet, from a random sample; ``"random"`` draws them at random.

With no history (or none of its products embedded yet) all ``k`` are exploration picks. Each
product comes back with ``recommendation`` (``"similar"`` or ``"explore"``) and
``distance``/``similarity`` to the preference (``None`` for exploration picks).
``bench/rounds_to_target.py`` measures how fast the mix leads a shopper to a product.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db.models import Avg, Q, Subquery
from pgvector.django import CosineDistance

from visualsearch.conf import visualsearch_settings
from visualsearch.ingest import fusion
from visualsearch.query import diversity, fused
from visualsearch.query.knn import compact_filters, nearest_products
from visualsearch.storage import statements
from visualsearch.storage.layout import ready_rows
from visualsearch.storage.lookup import get_product_model, get_text_model

__all__ = [
    "EXPLORE",
    "SIMILAR",
    "check_settings",
    "forget",
    "preference_vector",
    "recommend",
    "recommend_for_session",
    "record_shown",
    "record_view",
    "shown_products",
    "viewed_products",
]

SIMILAR = "similar"
EXPLORE = "explore"
STRATEGIES = ("diverse", "random")
#: Session keys: product ids viewed (most recent last), and recently recommended.
VIEWED_KEY = "visualsearch.viewed"
SHOWN_KEY = "visualsearch.shown"
#: Near products fetched per similar pick, among which maximal marginal relevance chooses.
SIMILAR_POOL = 5
#: Random products sampled for "diverse" exploration picks.
EXPLORE_SAMPLE = 200


# --- the session --------------------------------------------------------------------------


def viewed_products(session: Any) -> list:
    """Primary keys of the products viewed in ``session``, most recent last (``[]`` if none)."""
    return _read(session, VIEWED_KEY)


def shown_products(session: Any) -> list:
    """Primary keys of the products recommended in ``session`` lately, most recent last."""
    return _read(session, SHOWN_KEY)


def record_view(session: Any, product: Any) -> list:
    """Remember that the shopper viewed (or clicked) ``product`` (an instance or a pk).

    A product viewed again moves to the end; only the last ``RECOMMEND_HISTORY`` are kept.
    Returns the new history.
    """
    pk = getattr(product, "pk", product)
    history = [item for item in viewed_products(session) if item != pk] + [pk]
    return _write(session, VIEWED_KEY, history, _setting_int("RECOMMEND_HISTORY", minimum=1))


def record_shown(session: Any, products: Iterable[Any]) -> list:
    """Remember that ``products`` were recommended, so the next recommendations show others."""
    memory = _setting_int("RECOMMEND_SHOWN_MEMORY", minimum=0)
    pks = [getattr(product, "pk", product) for product in products]
    if not memory or not pks:
        return shown_products(session)
    new = set(pks)
    shown = [item for item in shown_products(session) if item not in new] + pks
    return _write(session, SHOWN_KEY, shown, memory)


def forget(session: Any) -> None:
    """Drop the shopper's history of viewed and recommended products."""
    if session is not None:
        for key in (VIEWED_KEY, SHOWN_KEY):
            session.pop(key, None)


def _read(session: Any, key: str) -> list:
    values = session.get(key) if session is not None else None
    if not isinstance(values, list):
        return []
    pk_field = get_product_model()._meta.pk
    pks = []
    for value in values:  # a stale or hand-made session must not break the page
        try:
            pk = pk_field.to_python(value)
        except (ValidationError, TypeError, ValueError):
            continue
        if pk is not None and pk not in pks:
            pks.append(pk)
    return pks


def _write(session: Any, key: str, pks: list, limit: int) -> list:
    pks = pks[-limit:] if limit else []
    session[key] = [pk if isinstance(pk, int) else str(pk) for pk in pks]  # JSON-serialisable
    return pks


# --- recommendations ------------------------------------------------------------------------


def preference_vector(
    viewed: Sequence[Any], focus: float | None = None, *, model: type | None = None
) -> np.ndarray | None:
    """Mean vector of the ``viewed`` products (pks, most recent last); ``None`` if none embedded.

    Only products whose vector is within cosine similarity ``focus`` (``RECOMMEND_FOCUS``) of
    the latest one's count; ``0`` averages them all. Every ready image counts once. One
    ``AVG(embedding)`` query. ``model`` averages another embedding model keyed by product
    instead of the image model (the product-text model: the preference in text space).
    """
    viewed = list(viewed)
    if not viewed:
        return None
    focus = _setting_share("RECOMMEND_FOCUS") if focus is None else float(focus)
    images, product_field = ready_rows(model)
    viewed_images = images.filter(**{f"{product_field}__in": viewed})
    if focus > 0 and len(viewed) > 1:
        # One statement: the latest product's mean is a subquery Postgres runs once; while
        # the latest product has no ready image (NULL) every viewed product counts.
        field = images.model._meta.get_field("embedding")
        latest = Subquery(
            images.filter(**{product_field: viewed[-1]})
            .values(product_field)
            .annotate(mean=Avg("embedding"))
            .values("mean"),
            output_field=field,
        )
        near = viewed_images.alias(latest=latest, distance=CosineDistance("embedding", latest))
        return _mean(
            near.filter(
                Q(**{product_field: viewed[-1]})
                | Q(distance__lte=1 - focus)
                | Q(latest__isnull=True)
            )
        )
    return _mean(viewed_images)


def recommend(
    viewed: Sequence[Any],
    k: int | None = None,
    *,
    exclude: Iterable[Any] = (),
    exploration: float | None = None,
    strategy: str | None = None,
    queryset: Any = None,
    **filters: Any,
) -> list:
    """``k`` products for a shopper who viewed ``viewed`` (pks, most recent last).

    Never returns a viewed product; products in ``exclude`` (recently shown ones) only when
    nothing else is left. ``exploration`` and ``strategy`` default to the settings; keyword
    ``filters`` apply to the product model, and ``queryset`` is the product queryset results
    are loaded from (as in :func:`visualsearch.query.nearest_products`).
    """
    k = _setting_int("RECOMMEND_SIZE", minimum=1) if k is None else int(k)
    if k < 1:
        return []
    if exploration is None:
        exploration = _setting_share("RECOMMEND_EXPLORATION")
    elif not 0 <= exploration <= 1:
        raise ValueError(f"exploration must be between 0 and 1, got {exploration!r}.")
    strategy = _strategy(strategy)
    viewed, exclude = list(viewed), list(exclude)
    filters = compact_filters(filters)  # a pk__in of thousands of ids: one array parameter
    preference = _Preference.of(viewed)
    explore_count = k if preference is None else round(k * exploration)
    seen = set(viewed) | set(exclude) | _beside(viewed, preference, queryset, filters)

    picks = []
    if explore_count < k:
        picks = _similar(preference, k - explore_count, seen, queryset, filters)
    chosen = seen | {product.pk for product in picks}
    if strategy == "diverse":
        covered = [*viewed, *exclude, *(product.pk for product in picks)]
        more = _diverse(k - len(picks), covered, chosen, queryset, filters)
    else:
        more = _random(k - len(picks), chosen, queryset, filters)
    picks += _as_exploration(more)
    if len(picks) < k:  # the catalog (or the filters) leave too little unseen: repeat shown ones
        chosen = set(viewed) | {product.pk for product in picks}
        if preference is not None:
            picks += _similar(preference, k - len(picks), chosen, queryset, filters)
            chosen |= {product.pk for product in picks}
        picks += _as_exploration(_random(k - len(picks), chosen, queryset, filters))
    return picks


def recommend_for_session(
    session: Any, k: int | None = None, *, remember: bool = True, **options: Any
) -> list:
    """:func:`recommend` for the shopper of ``session`` (``None``: a shopper with no history).

    Skips the products recommended to them lately and, with ``remember``, records the new ones
    as shown (so a first visit stores a session too). ``options`` are those of
    :func:`recommend`.
    """
    products = recommend(viewed_products(session), k, exclude=shown_products(session), **options)
    if remember and session is not None:
        record_shown(session, products)
    return products


def _beside(viewed: list, preference: Any, queryset: Any, filters: dict) -> set:
    """The ``RECOMMEND_SKIP_SIMILAR`` products most similar to the latest viewed one: what the
    similar-products widget beside the recommendations shows on its page, not repeated."""
    count = _setting_int("RECOMMEND_SKIP_SIMILAR", minimum=0)
    if not count or not viewed or preference is None:
        return set()
    from visualsearch.query.search import similar_products

    return {p.pk for p in similar_products(viewed[-1], count, queryset=queryset, **filters)}


class _Preference:
    """The shopper's preference: the fused vector where recommendations rank by fused
    vectors (``FUSED_SURFACES``), else the image vector, and the text vector where text
    counts."""

    def __init__(self, viewed: list, image: Any = None, fused: Any = None, recipe: Any = None):
        self.image, self.fused, self.recipe = image, fused, recipe
        self.text, self.text_weight = None, 0.0
        text_model = get_text_model()
        weight = _setting_share("RECOMMEND_TEXT_WEIGHT")
        if fused is None and text_model is not None and weight > 0:
            self.text = preference_vector(viewed, model=text_model)
            self.text_weight = weight if self.text is not None else 0.0

    @classmethod
    def of(cls, viewed: list) -> _Preference | None:
        """The preference of ``viewed`` (pks, most recent last); None if none is embedded.
        The image vectors are averaged only when no fused vector serves."""
        if not viewed:
            return None
        recipe = fusion.serves("recommend")
        fused_vector = None if recipe is None else _fused_preference(viewed, recipe)
        if fused_vector is not None:
            return cls(viewed, fused=fused_vector, recipe=recipe)
        image = preference_vector(viewed)
        return None if image is None else cls(viewed, image=image)


def _similar(
    preference: _Preference, count: int, exclude: set, queryset: Any, filters: dict
) -> list:
    """``count`` products near ``preference``, spread apart by maximal marginal relevance.

    With text counting, the products nearest in text space join the image neighbours, and
    each candidate's relevance is the weighted sum of its image and text similarities.
    """
    if count < 1:
        return []
    size = count * SIMILAR_POOL
    options = {"exclude": exclude, "queryset": queryset, **filters}
    if preference.fused is not None:
        current = preference.recipe
        pool = fused.nearest(preference.fused, size, current, **options)
        vectors = partial(fused.product_vectors, current=current)
        dimensions = current.dimensions
    else:
        pool = nearest_products(preference.image, size, **options)
        if preference.text_weight:
            pool = _with_text_neighbours(pool, preference, count, exclude, queryset, filters)
        vectors, dimensions = diversity.product_vectors, len(preference.image)
    if len(pool) > count and not preference.text_weight:  # the text blend spread its own
        found = vectors([product.pk for product in pool])
        matrix = np.stack([found.get(p.pk, np.zeros(dimensions, np.float32)) for p in pool])
        relevance = np.array([product.similarity for product in pool])
        pool = _spread(pool, relevance, diversity.unit(matrix), count)
    pool = pool[:count]
    for product in pool:
        product.recommendation = SIMILAR
    return pool


def _fused_preference(viewed: list, current: Any) -> np.ndarray | None:
    """Mean fused vector of the viewed products near the latest one (``RECOMMEND_FOCUS``);
    None when the latest viewed product has no fused vector yet."""
    vectors = fused.product_vectors(viewed, current)
    if viewed[-1] not in vectors:
        return None
    latest = diversity.unit(vectors[viewed[-1]])
    focus = _setting_share("RECOMMEND_FOCUS")
    near = [
        diversity.unit(vector)
        for vector in vectors.values()
        if focus <= 0 or float(diversity.unit(vector) @ latest) >= focus
    ]
    return np.mean(np.stack(near), axis=0)


def _with_text_neighbours(
    pool: list, preference: _Preference, count: int, exclude: set, queryset: Any, filters: dict
) -> list:
    """``count`` of ``pool`` (image neighbours) and the text neighbours of the preference,
    ranked by the weighted sum of image and text similarity, spread by maximal marginal
    relevance."""
    from visualsearch.query.hybrid import semantic_ranking

    known = {product.pk for product in pool}
    size = count * SIMILAR_POOL
    text_pks = semantic_ranking("", size, vector=preference.text, exclude=exclude, **filters)
    pool = pool + _load([pk for pk in text_pks if pk not in known], queryset)
    pks = [product.pk for product in pool]
    weight = preference.text_weight
    parts = []  # unit rows of each space (zeros where a product has no vector), scaled
    relevance = np.zeros(len(pool), dtype=np.float32)
    for model, vector, share in (
        (None, preference.image, 1.0 - weight),
        (get_text_model(), preference.text, weight),
    ):
        vectors = diversity.product_vectors(pks, model=model)
        matrix = np.stack([vectors.get(pk, np.zeros(len(vector), np.float32)) for pk in pks])
        relevance += share * (matrix @ diversity.unit(vector))
        parts.append(np.sqrt(share) * matrix)
    for product, value in zip(pool, relevance, strict=True):
        product.similarity = float(value)
        product.distance = 1.0 - float(value)
    order = np.argsort(-relevance, kind="stable")
    pool, relevance = [pool[i] for i in order], relevance[order]
    return _spread(pool, relevance, np.concatenate(parts, axis=1)[order], count)


def _spread(pool: list, relevance: np.ndarray, matrix: np.ndarray, count: int) -> list:
    """The ``count`` of ``pool`` that maximal marginal relevance keeps, nearest first."""
    weight = 1.0 - _setting_share("RECOMMEND_DIVERSITY")
    chosen = diversity.maximal_marginal_relevance(relevance, matrix, count, weight)
    return [pool[index] for index in sorted(chosen)]


def _diverse(count: int, covered: list, exclude: set, queryset: Any, filters: dict) -> list:
    """``count`` embedded products outside ``exclude`` that stand for what is not ``covered``."""
    if count < 1:
        return []
    sample = diversity.sample_vectors(
        max(EXPLORE_SAMPLE, count), exclude=exclude, queryset=queryset, **filters
    )
    pks = list(sample)
    if len(pks) > count:
        seen = list(diversity.product_vectors(covered).values())
        chosen = diversity.coverage(
            np.stack(list(sample.values())), count, np.stack(seen) if seen else None
        )
        pks = [pks[index] for index in chosen]
    return _load(pks, queryset)


def _random(count: int, exclude: set, queryset: Any, filters: dict) -> list:
    """``count`` products outside ``exclude``, a sample of the catalog
    (:func:`visualsearch.query.diversity.sample_pks`: no sort of the whole table)."""
    if count < 1:
        return []
    products = _products(queryset).filter(**filters)
    if exclude:
        products = products.exclude(pk__in=list(exclude))
    return _load(diversity.sample_pks(products, count, seed=exclude), queryset)


def _as_exploration(products: list) -> list:
    for product in products:
        product.recommendation = EXPLORE
        product.distance = product.similarity = None
    return products


def _mean(images: Any) -> np.ndarray | None:
    mean = images.aggregate(mean=Avg("embedding"))["mean"]
    return None if mean is None else np.asarray(mean, dtype=np.float32)


def _products(queryset: Any) -> Any:
    return queryset if queryset is not None else get_product_model()._default_manager.all()


def _load(pks: list, queryset: Any) -> list:
    if queryset is None:  # the default manager's statement, compiled once per size
        found = statements.in_bulk(get_product_model(), pks)
    else:
        found = queryset.in_bulk(pks)
    return [found[pk] for pk in pks if pk in found]


def check_settings() -> None:
    """Raise ``ImproperlyConfigured`` for any invalid ``RECOMMEND_*`` setting (check E005)."""
    _setting_int("RECOMMEND_SIZE", minimum=1)
    _setting_int("RECOMMEND_HISTORY", minimum=1)
    _setting_int("RECOMMEND_SHOWN_MEMORY", minimum=0)
    _setting_int("RECOMMEND_SKIP_SIMILAR", minimum=0)
    for name in (
        "RECOMMEND_EXPLORATION",
        "RECOMMEND_DIVERSITY",
        "RECOMMEND_FOCUS",
        "RECOMMEND_TEXT_WEIGHT",
    ):
        _setting_share(name)
    _strategy(None)


def _setting_int(name: str, *, minimum: int) -> int:
    value = getattr(visualsearch_settings, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ImproperlyConfigured(
            f"VISUALSEARCH[{name!r}] must be an integer of at least {minimum}, got {value!r}."
        )
    return value


def _setting_share(name: str) -> float:
    value = getattr(visualsearch_settings, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ImproperlyConfigured(
            f"VISUALSEARCH[{name!r}] must be a number from 0 to 1, got {value!r}."
        )
    return float(value)


def _strategy(value: str | None) -> str:
    if value is None:
        value = visualsearch_settings.RECOMMEND_EXPLORATION_STRATEGY
        if value not in STRATEGIES:
            raise ImproperlyConfigured(
                f'VISUALSEARCH["RECOMMEND_EXPLORATION_STRATEGY"] must be one of {STRATEGIES}, '
                f"got {value!r}."
            )
    elif value not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {value!r}.")
    return value
