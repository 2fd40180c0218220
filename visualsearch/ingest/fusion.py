"""Fused product vectors: a product's images and words in one vector (setting ``FUSION``).

A product's fused vector puts its parts side by side: the mean of its ready image vectors
(the serving encoder's) and the text encoder's vector of each text field the recipe names,
every part at unit length scaled by the square root of its share of the weights. The cosine
similarity of two fused vectors is then the weighted mean of their parts' similarities; a
part a product lacks (an empty description) counts as zero and the others' shares grow.

The vectors live on the product-text rows (``EmbeddedText.fused_*``) and are written by the
one embedding loop (:func:`visualsearch.ingest.loop.embed`): a row whose inputs (image
contents, words, recipe) are unchanged is not computed again. The workers keep them up to
date: a change of words or images marks the row ``pending`` and a task rebuilds it; queries
fall back to the image vectors for products whose fused vector is not ready.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Avg
from django.utils import timezone

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders.base import l2_normalize
from visualsearch.ingest import features
from visualsearch.ingest.loop import EmbedResult, Item, Strategy, embed
from visualsearch.models import EmbeddingStatus
from visualsearch.storage.layout import image_storage
from visualsearch.storage.lookup import get_text_model

logger = logging.getLogger(__name__)

IMAGE = "image"
SURFACES = ("similar", "photo", "recommend")


@dataclass(frozen=True)
class Recipe:
    """What a fused vector is made of: the parts' weights and the encoders of the parts."""

    weights: tuple[tuple[str, float], ...]  # ("image", w) first, then (field path, w)
    image_model: str
    text_model: str
    image_dimensions: int
    text_dimensions: int

    @property
    def fields(self) -> list[str]:
        """The text fields of the recipe, in order."""
        return [name for name, _weight in self.weights if name != IMAGE]

    @property
    def dimensions(self) -> int:
        """Length of the fused vectors."""
        return self.image_dimensions + self.text_dimensions * len(self.fields)

    @property
    def model_id(self) -> str:
        """Identifies the recipe and the encoders: vectors of another one are stale."""
        source = [self.weights, self.image_model, self.text_model]
        return "fused:" + hashlib.sha256(json.dumps(source).encode()).hexdigest()[:12]

    def combine(self, image: np.ndarray | None, texts: list[np.ndarray | None]) -> np.ndarray:
        """The unit fused vector of an image part and text parts (None: the part is absent)."""
        parts = [image, *texts]
        sizes = [self.image_dimensions] + [self.text_dimensions] * len(texts)
        present = [
            weight
            for (_name, weight), part in zip(self.weights, parts, strict=True)
            if part is not None
        ]
        total = sum(present) or 1.0
        blocks = []
        for (_name, weight), part, size in zip(self.weights, parts, sizes, strict=True):
            if part is None:
                blocks.append(np.zeros(size, np.float32))
            else:
                unit = l2_normalize(np.asarray(part, np.float32)[None, :])[0]
                blocks.append(unit * np.float32(np.sqrt(weight / total)))
        return np.concatenate(blocks).astype(np.float32)

    def text_parts(self, fused: np.ndarray) -> np.ndarray:
        """The text parts of a fused vector, ``(fields, text dimensions)``, as stored."""
        return np.asarray(fused[self.image_dimensions :], np.float32).reshape(
            len(self.fields), self.text_dimensions
        )


def recipe() -> Recipe | None:
    """The configured recipe (``FUSION``), or None while fusion is off."""
    weights = visualsearch_settings.FUSION
    if weights is None:
        return None
    _check(weights)
    from visualsearch.encoders import get_text_encoder
    from visualsearch.encoders.serving import serving_encoder

    image, text = serving_encoder(), get_text_encoder()
    ordered = [(IMAGE, float(weights[IMAGE]))]
    ordered += [(str(name), float(w)) for name, w in weights.items() if name != IMAGE]
    return Recipe(tuple(ordered), image.model_id, text.model_id, image.dimensions, text.dimensions)


def _check(weights: Any) -> None:
    """``ImproperlyConfigured`` unless ``FUSION`` is a valid recipe (system check E007)."""
    key = 'VISUALSEARCH["FUSION"]'
    if not isinstance(weights, dict) or IMAGE not in weights or len(weights) < 2:
        raise ImproperlyConfigured(
            f'{key} must be a dict of weights with "image" and at least one text field, '
            f'for example {{"image": 0.5, "name": 0.5}}; got {weights!r}.'
        )
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise ImproperlyConfigured(f"{key}: the weight of {name!r} must be a positive number.")
    if not visualsearch_settings.TEXT_MODEL:
        raise ImproperlyConfigured(f'{key} needs text search: set VISUALSEARCH["TEXT_MODEL"].')
    unknown = [
        name for name in weights if name != IMAGE and name not in visualsearch_settings.TEXT_FIELDS
    ]
    if unknown:
        raise ImproperlyConfigured(
            f'{key}: {unknown} are not in VISUALSEARCH["TEXT_FIELDS"] '
            f"{list(visualsearch_settings.TEXT_FIELDS)}; fused text parts are text fields."
        )


def check_settings() -> None:
    """Raise ``ImproperlyConfigured`` for an invalid ``FUSION`` or ``FUSED_SURFACES``."""
    if visualsearch_settings.FUSION is not None:
        _check(visualsearch_settings.FUSION)
    surfaces = visualsearch_settings.FUSED_SURFACES
    if isinstance(surfaces, str) or not all(surface in SURFACES for surface in surfaces):
        raise ImproperlyConfigured(
            f'VISUALSEARCH["FUSED_SURFACES"] must be a list of {list(SURFACES)}, got {surfaces!r}.'
        )


def serves(surface: str) -> Recipe | None:
    """The recipe when ``surface`` ranks by fused vectors, else None."""
    if surface not in visualsearch_settings.FUSED_SURFACES:
        return None
    return recipe()


# --- keeping them up to date ---------------------------------------------------------------


def mark_pending(product_pks: Iterable) -> list:
    """Mark the fused vectors of these products ``pending`` (their images or words changed);
    returns the pks of their product-text rows, to enqueue. Nothing while fusion is off."""
    model = get_text_model()
    product_pks = list(product_pks)
    if model is None or visualsearch_settings.FUSION is None or not product_pks:
        return []
    rows = model._base_manager.filter(**{f"{_attname(model)}__in": product_pks})
    pks = list(rows.values_list("pk", flat=True))
    rows.filter(pk__in=pks).update(
        fused_status=EmbeddingStatus.PENDING, fused_updated_at=timezone.now()
    )
    return pks


def images_changed(image_pks: Iterable) -> list:
    """:func:`mark_pending` for the products of these images; the text-row pks."""
    if visualsearch_settings.FUSION is None:
        return []  # no query at all after every image task while fusion is off
    storage = image_storage()
    products = storage.image_model._base_manager.filter(pk__in=list(image_pks))
    field = storage.image_model._meta.get_field(visualsearch_settings.PRODUCT_FIELD).attname
    return mark_pending(set(products.values_list(field, flat=True)))


def mark_stale() -> int:
    """Mark fused vectors of another recipe (or image encoder) ``stale``; returns how many."""
    model, current = get_text_model(), recipe()
    if model is None or current is None:
        return 0
    return (
        model._base_manager.filter(fused_status=EmbeddingStatus.READY)
        .exclude(fused_model=current.model_id)
        .update(fused_status=EmbeddingStatus.STALE, fused_updated_at=timezone.now())
    )


def waiting(older_than: Any = None) -> list:
    """Pks of product-text rows whose fused vector waits (pending or stale)."""
    model = get_text_model()
    if model is None or visualsearch_settings.FUSION is None:
        return []
    rows = model._base_manager.filter(
        fused_status__in=[EmbeddingStatus.PENDING, EmbeddingStatus.STALE]
    )
    if older_than is not None:
        rows = rows.filter(fused_updated_at__lt=older_than)
    return list(rows.order_by("pk").values_list("pk", flat=True))


class FusedEncoder:
    """Builds fused vectors from prepared inputs; the text parts are encoded by the text
    encoder once per distinct words (kept in ``EncodedVector`` under its model id)."""

    def __init__(self, current: Recipe) -> None:
        from visualsearch.encoders import get_text_encoder

        self.recipe, self.text_encoder = current, get_text_encoder()
        self.model_id = current.model_id

    def encode(self, inputs: list[tuple[np.ndarray, list[str]]]) -> list[np.ndarray]:
        words = {text for _image, texts in inputs for text in texts if text}
        digests = {text: hashlib.sha256(text.encode()).hexdigest() for text in words}
        known = features.lookup(self.text_encoder.model_id, digests.values())
        new = [text for text in words if digests[text] not in known]
        if new:
            vectors = self.text_encoder.encode_texts(new)
            features.store(self.text_encoder.model_id, [digests[t] for t in new], vectors)
            known.update(zip((digests[t] for t in new), vectors, strict=True))
        return [
            self.recipe.combine(image, [known[digests[t]] if t else None for t in texts])
            for image, texts in inputs
        ]


class FusedStrategy(Strategy):
    """Product-text rows: their fused vectors, from the images' vectors and the words."""

    noun = "fused vector"

    def __init__(self, model: type, current: Recipe) -> None:
        self.model, self.recipe = model, current
        self.encoder = FusedEncoder(current)

    def read(self, pks: list, result: EmbedResult) -> list[Item]:
        model, current = self.model, self.recipe
        attname = _attname(model)
        columns = ("pk", attname, "fused_updated_at", "fused_hash", "fused_model", "fused_status")
        rows = list(model._base_manager.filter(pk__in=pks).values_list(*columns))
        with_vector = model._base_manager.filter(pk__in=pks, fused_embedding__isnull=False)
        has_vector = set(with_vector.values_list("pk", flat=True))
        products = [row[1] for row in rows]
        texts = _field_texts(products, current.fields)
        means, hashes, waiting_images = _image_inputs(products, current.image_model)
        result.missing = [pk for pk in pks if pk not in {row[0] for row in rows}]
        items = []
        for pk, product, guard, stored_hash, stored_model, status in rows:
            if product in waiting_images:
                continue  # an image is still being embedded: its task marks this row again
            inputs = [current.model_id, sorted(hashes.get(product, [])), texts.get(product)]
            digest = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()
            item = Item(pk, guard, digest, payload=(means.get(product), texts.get(product)))
            item.stored_hash, item.stored_model, item.status = stored_hash, stored_model, status
            item.has_vector = pk in has_vector
            if product not in means:
                self.fail(item, "The product has no embedded image.", result)
                continue
            if product not in texts:
                result.missing.append(pk)
                continue
            items.append(item)
        return items

    def known(self, digests: set[str]) -> dict[str, Any]:
        rows = self.model._base_manager.filter(
            fused_hash__in=digests,
            fused_model=self.encoder.model_id,
            fused_status=EmbeddingStatus.READY,
        ).exclude(fused_embedding=None)
        return dict(rows.values_list("fused_hash", "fused_embedding"))

    def encode(self, items: list[Item]) -> Any:
        return self.encoder.encode([item.payload for item in items])

    def write(self, item: Item, vector: Any) -> bool:
        values: dict[str, Any] = {
            "fused_model": self.encoder.model_id,
            "fused_hash": item.digest,
            "fused_status": EmbeddingStatus.READY,
            "fused_error": "",
        }
        if vector is not None:
            values["fused_embedding"] = np.asarray(vector, np.float32)
        rows = self.model._base_manager.filter(pk=item.pk, fused_updated_at=item.guard)
        return bool(rows.update(**values))

    def fail(self, item: Item, reason: str, result: EmbedResult) -> None:
        logger.info("visualsearch: fused vector of text row %s: %s", item.pk, reason)
        self.model._base_manager.filter(pk=item.pk, fused_updated_at=item.guard).update(
            fused_status=EmbeddingStatus.FAILED, fused_error=reason
        )
        result.failed[item.pk] = reason


def embed_fused(pks: Iterable, *, model: type | None = None, force: bool = False) -> EmbedResult:
    """Build the fused vectors of the product-text rows ``pks`` (nothing while fusion is off).

    Rows whose product still has an image being embedded are left ``pending`` (the image's
    task marks them again); a product without any embedded image is recorded ``failed``.
    """
    model = model or get_text_model()
    current = recipe()
    if model is None or current is None:
        return EmbedResult()
    return embed(FusedStrategy(model, current), pks, force=force)


def _attname(model: type) -> str:
    return model._meta.get_field(visualsearch_settings.PRODUCT_FIELD).attname


def _field_texts(product_pks: list, fields: list[str]) -> dict[Any, list[str]]:
    """``{product pk: [words of each field]}`` (stripped; ``""`` for an empty field)."""
    from visualsearch.storage.lookup import get_product_model

    rows = get_product_model()._base_manager.filter(pk__in=product_pks)
    return {
        pk: ["" if value is None else str(value).strip() for value in values]
        for pk, *values in rows.values_list("pk", *fields)
    }


def _image_inputs(product_pks: list, image_model_id: str) -> tuple[dict, dict, set]:
    """The products' mean image vector and image content hashes (ready rows of the serving
    encoder), and the products that have an image still waiting for its vector."""
    storage = image_storage()
    rows = storage.model._base_manager.filter(**{f"{storage.product}__in": product_pks})
    ready = rows.filter(embedding_status=EmbeddingStatus.READY, embedding_model=image_model_id)
    means = {
        product: np.asarray(mean, np.float32)
        for product, mean in ready.values(storage.product)
        .annotate(mean=Avg("embedding"))
        .values_list(storage.product, "mean")
        if mean is not None
    }
    hashes: dict[Any, list[str]] = {}
    for product, digest in ready.values_list(storage.product, "embedding_hash"):
        hashes.setdefault(product, []).append(digest)
    waiting_rows = rows.filter(
        embedding_status__in=[EmbeddingStatus.PENDING, EmbeddingStatus.STALE]
    )
    return means, hashes, set(waiting_rows.values_list(storage.product, flat=True))
