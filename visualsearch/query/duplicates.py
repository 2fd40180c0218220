"""Near-duplicate images: the same photo uploaded again, re-encoded, resized, cropped a little
or mirrored, on one product or on several.

:func:`find_duplicates` works in three steps, none of them over all pairs of images:

1. *Candidates* from the stored vectors of the serving encoder: for every ready image, its
   ``DUPLICATE_NEIGHBOURS`` nearest images through the HNSW index (one ``LATERAL`` statement
   per batch of images, with ``SET LOCAL hnsw.ef_search`` and the iterative scan), kept
   when their cosine similarity is at least ``DUPLICATE_THRESHOLD``.
2. *The pixel check* (:mod:`~visualsearch.query.pixelcheck`): the vectors cannot tell a
   re-encoded copy from a colour variant shot on the same model (both score 0.95-0.99), so
   each candidate pair is aligned and compared pixel by pixel, and kept when its difference
   is at most ``DUPLICATE_PIXEL_DIFFERENCE`` (``None``: vectors only).
3. *Groups*: the pairs kept are joined with a union-find, so a photo and three copies of it
   make one group of four.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from visualsearch.conf import visualsearch_settings
from visualsearch.query import pixelcheck
from visualsearch.query.knn import run as run_knn
from visualsearch.storage.layout import image_storage
from visualsearch.storage.lookup import get_product_model

__all__ = [
    "DuplicateGroup",
    "Link",
    "candidate_links",
    "check_links",
    "find_duplicates",
    "group_links",
    "members",
    "remember",
    "remembered",
    "resolve",
]

#: Images whose neighbours one statement fetches.
BATCH_SIZE = 256
#: Seconds found groups are remembered for the admin page (:func:`remember`).
REMEMBER_FOR = 7 * 24 * 3600
#: ``progress(stage, done, total)``: stage "vectors" (images) or "pixels" (candidate pairs).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Link:
    """Two images (primary keys, ``a < b``) found to be near-duplicates, and how near."""

    a: Any
    b: Any
    similarity: float  # cosine similarity of their vectors
    difference: float | None = None  # pixel difference once aligned (None: not checked)


@dataclass
class DuplicateGroup:
    """Images that are copies of one photo: ``images`` (primary keys, ascending), their
    products (``products[image pk]``) and the links that joined them."""

    images: list[Any]
    products: dict[Any, Any]
    links: list[Link] = field(repr=False)

    @property
    def product_pks(self) -> list[Any]:
        """The distinct products of the images, in the images' order."""
        return list(dict.fromkeys(self.products[pk] for pk in self.images))

    @property
    def similarity(self) -> float:
        """The lowest cosine similarity among the links that joined the group."""
        return min(link.similarity for link in self.links)

    @property
    def difference(self) -> float | None:
        """The largest pixel difference among the links (``None``: vectors only)."""
        checked = [link.difference for link in self.links if link.difference is not None]
        return max(checked) if checked else None


def find_duplicates(
    threshold: float | None = None,
    *,
    pixel_difference: float | None = None,
    pixel_check: bool = True,
    neighbours: int | None = None,
    progress: Progress | None = None,
) -> list[DuplicateGroup]:
    """Groups of near-duplicate images among the ready images, largest first.

    ``threshold`` (cosine similarity, default ``DUPLICATE_THRESHOLD``) and ``neighbours``
    (``DUPLICATE_NEIGHBOURS``) choose the candidates; ``pixel_difference`` (default
    ``DUPLICATE_PIXEL_DIFFERENCE``) is the pixel check's limit, and ``pixel_check=False``
    (or the setting ``None``) groups the candidates as they are. ``ValueError`` for an
    argument out of range, ``ImproperlyConfigured`` for such a setting.
    """
    threshold, limit, neighbours = resolve(threshold, pixel_difference, pixel_check, neighbours)
    links = candidate_links(threshold, neighbours, progress=progress)
    if limit is not None:
        checked = check_links(links, limit, progress=progress)
        # An image whose file cannot be read (None) is no duplicate of anything.
        links = [link for link in checked if link.difference is not None]
        links = [link for link in links if link.difference <= limit]
    return group_links(links)


def resolve(
    threshold: float | None = None,
    pixel_difference: float | None = None,
    pixel_check: bool = True,
    neighbours: int | None = None,
) -> tuple[float, float | None, int]:
    """``(threshold, pixel difference or None, neighbours)`` as :func:`find_duplicates` reads
    its arguments: the settings for those left ``None``, each checked."""
    threshold = _argument("threshold", threshold, "DUPLICATE_THRESHOLD", _is_share, SHARE)
    neighbours = _argument("neighbours", neighbours, "DUPLICATE_NEIGHBOURS", _is_count, COUNT)
    limit = None
    if pixel_check:
        setting = visualsearch_settings.DUPLICATE_PIXEL_DIFFERENCE
        if pixel_difference is not None or setting is not None:
            key = "DUPLICATE_PIXEL_DIFFERENCE"
            limit = _argument("pixel_difference", pixel_difference, key, _is_share, SHARE)
    return float(threshold), None if limit is None else float(limit), neighbours


SHARE, COUNT = "a number in (0, 1]", "an integer in 1..1000"


def _is_share(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000


def _argument(name: str, value: Any, key: str, valid: Callable[[Any], bool], expected: str):
    """``value``, or when it is ``None`` the setting ``key``; ``ValueError`` (an argument)
    or ``ImproperlyConfigured`` (a setting) unless ``valid``."""
    if value is None:
        value = getattr(visualsearch_settings, key)
        if not valid(value):
            raise ImproperlyConfigured(f"VISUALSEARCH[{key!r}] must be {expected}, got {value!r}.")
    elif not valid(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    return value


def candidate_links(
    threshold: float, neighbours: int, *, progress: Progress | None = None
) -> list[Link]:
    """Pairs of ready images whose vectors are within ``threshold`` (cosine similarity),
    among each image's ``neighbours`` nearest through the HNSW index; each pair once."""
    storage = image_storage()
    model = storage.model
    db = model.objects.db
    pks = list(model.objects.ready().order_by("pk").values_list("pk", flat=True))
    sql = _neighbours_sql(model, db)
    best: dict[tuple[Any, Any], float] = {}
    for start in range(0, len(pks), BATCH_SIZE):
        batch = pks[start : start + BATCH_SIZE]
        params = (list(model.embedding_models()), neighbours, batch, 1.0 - threshold)
        for a, b, distance in run_knn(sql, params, db, neighbours):
            key = (a, b) if a < b else (b, a)
            best[key] = min(best.get(key, 2.0), float(distance))
        if progress is not None:
            progress("vectors", start + len(batch), len(pks))
    return [Link(a, b, 1.0 - distance) for (a, b), distance in sorted(best.items())]


def _neighbours_sql(model: type, db: str) -> str:
    """The ``neighbours`` nearest ready images of each image of a batch, within a distance.

    Parameters: the ready model ids, the number of neighbours, the batch's primary keys and
    the largest cosine distance. The inner ``ORDER BY … LIMIT`` is served by the HNSW index
    (the same expression as the index: a cast to halfvec with ``HNSW_HALFVEC``).
    """
    quote = connections[db].ops.quote_name
    meta = model._meta
    table, pk = quote(meta.db_table), quote(meta.pk.column)
    vector, status, model_id = (
        quote(meta.get_field(name).column)
        for name in ("embedding", "embedding_status", "embedding_model")
    )
    cast = ""
    if visualsearch_settings.HNSW_HALFVEC:
        cast = f"::halfvec({meta.get_field('embedding').dimensions})"
    distance = f"b.{vector}{cast} <=> a.{vector}{cast}"
    return (
        f"SELECT a.{pk}, n.pk, n.distance FROM {table} a CROSS JOIN LATERAL ("
        f"SELECT b.{pk} AS pk, {distance} AS distance FROM {table} b "
        f"WHERE b.{status} = 'ready' AND b.{model_id} = ANY(%s) AND b.{pk} <> a.{pk} "
        f"ORDER BY {distance} LIMIT %s) n "
        f"WHERE a.{pk} = ANY(%s) AND n.distance <= %s"
    )


def check_links(
    links: Iterable[Link], limit: float | None = None, *, progress: Progress | None = None
) -> list[Link]:
    """``links`` with their pixel difference (:func:`pixelcheck.differences`, ``None`` where
    an image file cannot be read). With ``limit``, differences above it may be rough."""
    links = list(links)
    storage = image_storage()
    name = visualsearch_settings.IMAGE_FIELD
    wanted = {pk for link in links for pk in (link.a, link.b)}
    # The image rows with their files only, a thousand at a time.
    images: dict[Any, Any] = {}
    ordered = sorted(wanted)
    manager = storage.image_model._base_manager.only("pk", name)
    for start in range(0, len(ordered), 1000):
        images.update(manager.in_bulk(ordered[start : start + 1000]))

    def load(pk: Any) -> Any:
        image = images.get(pk)
        return pixelcheck.image_canvas(getattr(image, name)) if image is not None else None

    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress("pixels", done, len(links))

    pairs = [(link.a, link.b) for link in links]
    found = pixelcheck.differences(pairs, load, limit=limit, progress=advance)
    return [
        Link(link.a, link.b, link.similarity, difference)
        for link, difference in zip(links, found, strict=True)
    ]


def group_links(links: Iterable[Link]) -> list[DuplicateGroup]:
    """The connected groups of ``links`` (union-find), with their images' products; largest
    group first, then by first image."""
    links = list(links)
    parent: dict[Any, Any] = {}

    def root(pk: Any) -> Any:
        parent.setdefault(pk, pk)
        while parent[pk] != pk:
            parent[pk] = parent[parent[pk]]  # path halving
            pk = parent[pk]
        return pk

    for link in links:
        first, second = root(link.a), root(link.b)
        if first != second:
            parent[max(first, second)] = min(first, second)
    members: dict[Any, list[Any]] = {}
    for pk in sorted(parent):
        members.setdefault(root(pk), []).append(pk)
    by_root: dict[Any, list[Link]] = {}
    for link in links:
        by_root.setdefault(root(link.a), []).append(link)
    products = _products(list(parent))
    groups = [
        DuplicateGroup(images, {pk: products.get(pk) for pk in images}, by_root[key])
        for key, images in members.items()
    ]
    return sorted(groups, key=lambda group: (-len(group.images), group.images[0]))


def _products(pks: list[Any]) -> dict[Any, Any]:
    """``{image pk: product pk}`` of the vector rows ``pks``."""
    storage = image_storage()
    found: dict[Any, Any] = {}
    for start in range(0, len(pks), 1000):
        rows = storage.rows.filter(pk__in=pks[start : start + 1000])
        found.update(rows.values_list("pk", storage.product))
    return found


def members(groups: Iterable[DuplicateGroup], products: Any = None) -> dict[Any, tuple]:
    """``{image pk: (image row, product)}`` of the groups' images, in two queries: rows of
    the host's image model, products from the queryset ``products`` (default: the product
    model's default manager; ``None`` in the tuple for a product it leaves out)."""
    groups = list(groups)
    storage = image_storage()
    rows = storage.image_model._base_manager.all()
    if not storage.separate:  # the image rows hold the vectors: not needed here
        rows = rows.defer("embedding")
    images = rows.in_bulk([pk for group in groups for pk in group.images])
    if products is None:
        products = get_product_model()._default_manager.all()
    found = products.in_bulk({pk for group in groups for pk in group.products.values()})
    return {
        pk: (images.get(pk), found.get(group.products[pk]))
        for group in groups
        for pk in group.images
    }


def _cache_key(threshold: float, pixel_difference: float | None, neighbours: int) -> str:
    """The cache key of the groups found with these parameters in this database (its name:
    two databases behind one alias, such as a shop's and a benchmark's, never share one)."""
    import hashlib

    model = image_storage().model
    database = connections[model.objects.db].settings_dict["NAME"]
    found_with = (database, model.embedding_models(), threshold, pixel_difference, neighbours)
    return "visualsearch:duplicates:" + hashlib.sha256(repr(found_with).encode()).hexdigest()


def remember(
    groups: list[DuplicateGroup], threshold: float, pixel_difference: float | None, neighbours: int
) -> dict[str, Any]:
    """Keep ``groups`` found with these parameters, and when, for :func:`remembered` (the
    admin page shows what the command found); returns ``{"found_at", "groups"}``. A cache
    that cannot be reached keeps nothing."""
    from django.core.cache import caches
    from django.utils import timezone

    value = {"found_at": timezone.now(), "groups": groups}
    try:
        caches[visualsearch_settings.CACHE_ALIAS].set(
            _cache_key(threshold, pixel_difference, neighbours), value, REMEMBER_FOR
        )
    except Exception:  # redis-py and other backends raise their own types
        pass
    return value


def remembered(threshold: float, pixel_difference: float | None, neighbours: int) -> dict | None:
    """``{"found_at", "groups"}`` last kept by :func:`remember` for these parameters, if any."""
    from django.core.cache import caches

    try:
        return caches[visualsearch_settings.CACHE_ALIAS].get(
            _cache_key(threshold, pixel_difference, neighbours)
        )
    except Exception:
        return None
