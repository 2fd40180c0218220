"""A learned text → image bridge: product descriptions read into the image encoder's space.

An image encoder without a text tower (the offline EfficientNet) cannot place a description
among the photos. The bridge learns that reading from the catalog itself: every product gives
a pair (its text vector from the text model, the mean of its ready image vectors), and a
two-layer perceptron on the text side is trained with a symmetric in-batch contrastive loss
(InfoNCE, learned temperature) so that a product's bridged text vector lies nearest to its own
photo among the others in the batch; the image vectors stay frozen.

The result is a :class:`visualsearch.adapt.Projection` (one ``.npz``, NumPy-only inference)
whose metadata names the text and image model ids it was trained for. With
``VISUALSEARCH["TEXT_BRIDGE"]`` set to it, ``visualsearch.query.search(text=…)`` adds the
bridged vector's image ranking to the hybrid text search when the image encoder has no text
tower. A file trained for other models is an error (check ``visualsearch.E005``), never a
silently wrong ranking. ``manage.py visualsearch_bridge`` trains it; torch is imported only
for training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured

from visualsearch.encoders.bridge import KIND
from visualsearch.encoders.projection import Projection
from visualsearch.learning.adapt import fit, perceptron, torch_for_training
from visualsearch.query.diversity import unit, vectors_by_product
from visualsearch.storage.lookup import get_text_model

__all__ = ["catalog_pairs", "retrieval_at_k", "train_bridge"]

#: ``meta["kind"]`` of a bridge file (a catalog projection from visualsearch_adapt is not one).
#: Largest logit scale (1 / temperature) the training may learn, as in CLIP.
MAX_SCALE = 100.0


def train_bridge(
    texts: np.ndarray,
    images: np.ndarray,
    *,
    hidden: int = 1024,
    epochs: int = 30,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    temperature: float = 0.07,
    seed: int = 0,
    threads: int | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> Projection:
    """Fit a projection of ``texts`` (``(n, text d)``) onto the paired ``images`` rows.

    Symmetric InfoNCE over each mini-batch: row ``i``'s projected text must pick image ``i``
    among the batch's images and image ``i`` must pick text ``i``; the temperature starts at
    ``temperature`` and is learned (at least ``1 / MAX_SCALE``). The images are frozen targets
    (normalised here). Returns the projection with ``kind``, the hyperparameters and the
    learned temperature in its metadata; the caller adds the model ids.
    """
    texts = np.asarray(texts, dtype=np.float32)
    images = unit(images)
    if texts.ndim != 2 or images.ndim != 2 or len(texts) != len(images):
        raise ValueError("texts and images must be two matrices with one row per pair.")
    if len(texts) < 2:
        raise ValueError("The bridge needs at least two (text, image) pairs to train on.")
    torch = torch_for_training(seed, threads)
    x = torch.from_numpy(texts)
    y = torch.from_numpy(images)
    net = perceptron(x.shape[1], hidden, y.shape[1])
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
    normalize = torch.nn.functional.normalize
    cross_entropy = torch.nn.functional.cross_entropy

    def batch_loss(batch: Any) -> Any:
        scale = log_scale.clamp(max=math.log(MAX_SCALE)).exp()
        logits = scale * normalize(net(x[batch]), dim=1) @ y[batch].T
        target = torch.arange(len(batch))
        return (cross_entropy(logits, target) + cross_entropy(logits.T, target)) / 2

    fit(
        net, batch_loss, len(x), parameters=[log_scale], epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, on_epoch=on_epoch,
    )  # fmt: skip
    learned = math.exp(min(float(log_scale.detach()), math.log(MAX_SCALE)))
    return Projection.from_perceptron(
        net,
        {
            "kind": KIND, "pairs": len(x), "hidden": hidden, "epochs": epochs,
            "batch_size": batch_size, "seed": seed, "temperature": round(1.0 / learned, 5),
        },
    )  # fmt: skip


def retrieval_at_k(
    queries: np.ndarray,
    gallery: np.ndarray,
    own: Sequence[int],
    labels: Sequence[Any] | None = None,
    k: int = 10,
) -> dict[str, float]:
    """How well bridged text vectors find photos, by exact cosine ranking of ``gallery``.

    ``queries`` row ``i`` belongs to the product whose photo is ``gallery`` row ``own[i]``.
    Returns ``recall@k`` (share of queries whose own photo is among the ``k`` best; other
    photos at exactly the same score do not push it out) and, with ``labels`` (one per gallery
    row), ``precision@k`` (share of the ``k`` best photos whose label equals the own photo's).
    """
    queries, gallery = unit(queries), unit(gallery)
    own = np.asarray(own, dtype=np.int64)
    labels = None if labels is None else np.asarray(labels)
    k = min(k, len(gallery))
    found, precise = [], []
    for start in range(0, len(queries), 512):
        rows = slice(start, start + 512)
        scores = queries[rows] @ gallery.T
        targets = own[rows]
        own_score = scores[np.arange(len(targets)), targets]
        found.append((scores > own_score[:, None]).sum(axis=1) < k)
        if labels is not None:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            precise.append((labels[top] == labels[targets][:, None]).mean(axis=1))
    if not found:
        return {}
    metrics = {f"recall@{k}": float(np.concatenate(found).mean())}
    if precise:
        metrics[f"precision@{k}"] = float(np.concatenate(precise).mean())
    return metrics


def catalog_pairs() -> tuple[list, np.ndarray, np.ndarray]:
    """The catalog's training pairs: product pks, their text vectors, their image vectors.

    Only products with a ready text vector of the text model (``TEXT_MODEL``) and at least
    one ready image vector of the active image encoder take part; a product's image vector is
    the normalised mean of its images'. Vectors are read in binary; pks come sorted.
    """
    text_model = get_text_model()
    if text_model is None:
        raise ImproperlyConfigured(
            "The text bridge learns from product texts: set VISUALSEARCH['TEXT_MODEL'] and "
            "embed them (`manage.py visualsearch_reindex --texts`)."
        )
    from visualsearch.storage.layout import ready_rows

    texts = vectors_by_product(*ready_rows(text_model))
    images = vectors_by_product(*ready_rows())
    pks = sorted(set(texts) & set(images))
    if not pks:
        return [], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return pks, np.stack([texts[pk] for pk in pks]), np.stack([images[pk] for pk in pks])
