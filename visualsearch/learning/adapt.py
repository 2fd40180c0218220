"""Catalog adaptation: a small projection learned on top of a frozen encoder's features.

The projection is a two-layer perceptron trained on CPU with a cosine-softmax loss against one
learned proxy per catalog label (NormFace), so that images of the same label (article type,
category, …) end up close together. It is stored as one ``.npz`` file (weights + metadata)
and applied with NumPy alone; training imports torch on demand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from visualsearch.encoders.base import l2_normalize
from visualsearch.encoders.projection import Projection


def is_held_out(key: Any, fraction: float, seed: int = 0) -> bool:
    """Deterministic split: whether the product keyed ``key`` belongs to the held-out share."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8]
    return int(digest, 16) / 0xFFFFFFFF < fraction


def train_projection(
    features: np.ndarray,
    labels: Sequence[str],
    *,
    hidden: int = 1024,
    dimensions: int | None = None,
    epochs: int = 30,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    scale: float = 16.0,
    seed: int = 0,
    threads: int | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> Projection:
    """Fit a projection so that features of equal labels have high cosine similarity.

    ``dimensions`` defaults to the input size, so adapted vectors fit the existing column.
    Takes about 25 s for 5,000 images of 1280-d features on 2 cores.
    """
    torch = torch_for_training(seed, threads)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError("Adaptation needs at least two different labels.")
    index = {label: i for i, label in enumerate(classes)}
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    y = torch.tensor([index[label] for label in labels])
    out = dimensions or x.shape[1]
    net = perceptron(x.shape[1], hidden, out)
    proxies = torch.nn.Parameter(torch.randn(len(classes), out) * 0.01)
    normalize = torch.nn.functional.normalize

    def batch_loss(batch: Any) -> Any:
        logits = scale * normalize(net(x[batch]), dim=1) @ normalize(proxies, dim=1).T
        return torch.nn.functional.cross_entropy(logits, y[batch], label_smoothing=0.1)

    fit(
        net, batch_loss, len(x), parameters=[proxies], epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, on_epoch=on_epoch,
    )  # fmt: skip
    return Projection.from_perceptron(
        net, {"labels": len(classes), "hidden": hidden, "epochs": epochs, "seed": seed}
    )


# --- training pieces shared with visualsearch.bridge (torch is imported only in here) -------


def torch_for_training(seed: int, threads: int | None = None) -> Any:
    """The ``torch`` module, imported now, with its thread count and random seed set."""
    import torch

    from visualsearch.encoders.base import cpu_threads

    torch.set_num_threads(cpu_threads(threads))
    torch.manual_seed(seed)
    return torch


def perceptron(inputs: int, hidden: int, outputs: int) -> Any:
    """The untrained two-layer perceptron (``Linear → ReLU → Linear``) of a :class:`Projection`."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, outputs)
    )


@contextmanager
def epoch_progress(
    epochs: int, *, disable: bool = False, file: Any = None
) -> Iterator[Callable[[int, float], None]]:
    """A progress bar over training epochs: yields the ``on_epoch`` callback for :func:`fit`,
    which advances it and shows the mean loss; closed on leaving."""
    from tqdm import tqdm

    bar = tqdm(total=epochs, unit="epoch", disable=disable, file=file)
    try:
        yield lambda epoch, loss: (bar.update(), bar.set_postfix(loss=f"{loss:.3f}"))
    finally:
        bar.close()


def fit(
    net: Any,
    batch_loss: Callable[[Any], Any],
    count: int,
    *,
    parameters: Sequence[Any] = (),
    epochs: int = 30,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    """Train ``net`` (and the extra ``parameters``) with AdamW on shuffled mini-batches.

    ``batch_loss(indices)`` returns the loss of the training rows ``indices`` (a tensor of
    row numbers below ``count``); ``on_epoch(epoch, mean loss)`` follows every epoch.
    """
    import torch

    optimizer = torch.optim.AdamW(
        [*net.parameters(), *parameters], lr=learning_rate, weight_decay=1e-4
    )
    for epoch in range(epochs):
        order = torch.randperm(count)
        total = 0.0
        for start in range(0, count, batch_size):
            batch = order[start : start + batch_size]
            loss = batch_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        if on_epoch:
            on_epoch(epoch + 1, total / count)


def precision_at_k(
    vectors: np.ndarray,
    labels: Sequence[str],
    queries: np.ndarray,
    k: int = 10,
    groups: Sequence[Any] | None = None,
) -> float:
    """Exact precision@k by label for the ``queries`` rows (indices), excluding same-group rows.

    A quick numbers check for the adapt command; the evaluation harness measures through the
    app's own HNSW queries instead.
    """
    vectors = l2_normalize(vectors)
    labels = np.asarray(labels)
    groups = np.asarray(groups if groups is not None else np.arange(len(vectors)))
    hits = []
    for start in range(0, len(queries), 512):
        rows = queries[start : start + 512]
        scores = vectors[rows] @ vectors.T
        scores[groups[rows][:, None] == groups[None, :]] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        hits.append((labels[top] == labels[rows][:, None]).mean(axis=1))
    return float(np.concatenate(hits).mean()) if hits else float("nan")
