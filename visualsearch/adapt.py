"""Catalog adaptation: a small projection learned on top of a frozen encoder's features.

The projection is a two-layer perceptron trained on CPU with a cosine-softmax loss against one
learned proxy per catalog label (NormFace), so that images of the same label (article type,
category, …) end up close together. It is stored as one ``.npz`` file (weights + metadata)
and applied with NumPy alone; training imports torch on demand.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from visualsearch.encoders.base import l2_normalize


def is_held_out(key: Any, fraction: float, seed: int = 0) -> bool:
    """Deterministic split: whether the product keyed ``key`` belongs to the held-out share."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8]
    return int(digest, 16) / 0xFFFFFFFF < fraction


@dataclass
class Projection:
    """Weights of the adapter (``features @ w1 + b1 → ReLU → @ w2 + b2 → L2``) and metadata."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def input_dimensions(self) -> int:
        return int(self.w1.shape[0])

    @property
    def dimensions(self) -> int:
        return int(self.w2.shape[1])

    @cached_property
    def digest(self) -> str:
        """Content hash of the weights: part of the adapted encoder's model id."""
        sha = hashlib.sha256()
        for array in (self.w1, self.b1, self.w2, self.b2):
            sha.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return sha.hexdigest()

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Project ``(n, input_dimensions)`` features into unit-length ``(n, dimensions)`` rows."""
        hidden = np.maximum(np.asarray(features, dtype=np.float32) @ self.w1 + self.b1, 0)
        return l2_normalize(hidden @ self.w2 + self.b2)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npz`` atomically (processes that hot-reload never see half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(
                    handle, w1=self.w1, b1=self.b1, w2=self.w2, b2=self.b2,
                    meta=np.array(json.dumps(self.meta)),
                )  # fmt: skip
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def from_perceptron(cls, net: Any, meta: dict | None = None) -> Projection:
        """The weights of a trained :func:`perceptron` (a torch module), as NumPy arrays."""
        first, second = net[0], net[2]
        return cls(
            w1=first.weight.detach().numpy().T.copy(),
            b1=first.bias.detach().numpy().copy(),
            w2=second.weight.detach().numpy().T.copy(),
            b2=second.bias.detach().numpy().copy(),
            meta=dict(meta or {}),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Projection:
        """Read a projection written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name].astype(np.float32) for name in ("w1", "b1", "w2", "b2")}
            meta = json.loads(str(data["meta"]))
        return cls(**arrays, meta=meta)


class ProjectionFile:
    """A projection file, re-read when it is replaced (one ``stat`` per :meth:`get`).

    Processes that serve from it pick up a retrained file on their next use, so that web
    processes and workers never keep two versions side by side.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._loaded: tuple[tuple[int, int], Projection] | None = None
        self._lock = threading.Lock()

    def get(self, validate: Callable[[Projection], None] | None = None) -> Projection:
        """The projection now in the file; ``validate`` vets each newly read version.

        Raises ``FileNotFoundError`` when the file does not exist, and whatever ``validate``
        or reading a damaged file raises (nothing is kept then).
        """
        stat = self.path.stat()
        signature = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._loaded is None or self._loaded[0] != signature:
                projection = Projection.load(self.path)
                if validate is not None:
                    validate(projection)
                self._loaded = (signature, projection)
            return self._loaded[1]


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
