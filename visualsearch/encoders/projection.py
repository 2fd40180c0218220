"""A learned projection applied with NumPy alone: one ``.npz`` file of weights and metadata.

The catalog adaptation (``visualsearch.learning.adapt``, ``manage.py visualsearch_adapt``)
and the text bridge (``visualsearch.learning.bridge``) write such files; encoders and queries
only read them (:class:`ProjectionFile` re-reads a file that was replaced).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured

from visualsearch.encoders.base import l2_normalize


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
        """Write the ``.npz`` atomically (processes that hot-reload never see half a file),
        readable by every user as any new file is (0644 minus the umask): the web processes
        and workers that read it may run as another user than the command that trains it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp"))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
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

        Raises ``FileNotFoundError`` when the file does not exist, ``ImproperlyConfigured``
        naming the file when this process cannot read it (its mode, owner or type), and
        whatever ``validate`` or reading a damaged file raises (nothing is kept then).
        """
        try:
            stat = self.path.stat()
            signature = (stat.st_mtime_ns, stat.st_size)
            with self._lock:
                if self._loaded is None or self._loaded[0] != signature:
                    projection = Projection.load(self.path)
                    if validate is not None:
                        validate(projection)
                    self._loaded = (signature, projection)
                return self._loaded[1]
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise ImproperlyConfigured(
                f"The projection {self.path} cannot be read by this process "
                f"({exc.strerror or exc}): it must be a file readable by the user the web "
                "processes and workers run as (written by another user, give it mode 0644)."
            ) from exc


# --- training pieces shared with visualsearch.bridge (torch is imported only in here) -------
