"""The encoder interface: a batch of PIL images (or texts) in, L2-normalised float32 rows out."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


class TextEncodingNotSupported(Exception):
    """Raised by ``encode_texts`` on encoders that have no text tower."""


class BaseEncoder:
    """Base class of all encoders.

    Subclasses set ``dimensions`` (or compute it without loading weights), return a stable
    ``model_id`` that changes whenever the vectors would change (weights, preprocessing), and
    implement ``encode_images``; ``encode_texts`` only when the model has a text tower that
    maps into the same space as the images.
    """

    #: Length of the vectors this encoder returns.
    dimensions: int = 0
    #: Whether ``encode_texts`` works (CLIP-style models).
    supports_text: bool = False

    @property
    def model_id(self) -> str:
        """Identifier stored beside every vector; vectors of different ids are never mixed."""
        raise NotImplementedError

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode RGB images into an ``(n, dimensions)`` float32 array of unit-length rows."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into the image space; raises ``TextEncodingNotSupported`` by default."""
        raise TextEncodingNotSupported(
            f"The {type(self).__name__} encoder ({self.model_id}) has no text tower: "
            "configure a CLIP encoder, or a text model (VISUALSEARCH['TEXT_MODEL']), to search "
            "by text."
        )

    def derive(self, vector: np.ndarray, model_id: str) -> np.ndarray | None:
        """This encoder's vector for an image, from its stored vector of ``model_id``.

        ``None`` (the default) when it cannot be derived and the image must be encoded; the
        adapted encoder derives from its base model's vectors without touching the image.
        """
        return None

    def snapshot(self) -> BaseEncoder:
        """This encoder fixed as it is now, for one batch: its vectors and ``model_id`` then
        come from the same weights even if a file behind them is replaced meanwhile."""
        return self

    def frozen_options(self, options: dict) -> dict:
        """``options`` (its ``ENCODER_OPTIONS``) that rebuild exactly this encoder later, in
        any process, while it serves an older generation's queries (files copied if needed)."""
        return dict(options)

    def warm_up(self) -> None:
        """Load the model now (worker start) rather than on the first image."""
        self.encode_images([Image.new("RGB", (64, 64), "white")])

    def __repr__(self) -> str:
        try:
            model_id = self.model_id
        except Exception:  # e.g. an adapted encoder whose projection is not trained yet
            model_id = "(not ready)"
        return f"<{type(self).__name__} {model_id} ({self.dimensions}-d)>"


class BaseTextEncoder:
    """Base class of text encoders (product texts and queries, a space of their own).

    Subclasses set ``dimensions`` without loading weights, return a stable ``model_id`` and
    implement ``encode_texts``. Used by text search (``VISUALSEARCH["TEXT_ENCODER"]``).
    """

    #: Length of the vectors this encoder returns.
    dimensions: int = 0

    @property
    def model_id(self) -> str:
        """Identifier stored beside every text vector; vectors of other ids are never mixed."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into an ``(n, dimensions)`` float32 array of unit-length rows."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """Load the model now (worker start) rather than on the first text."""
        self.encode_texts(["warm up"])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id} ({self.dimensions}-d)>"


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Return ``rows`` as float32 with every row scaled to unit length (zero rows stay zero)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def cache_dir(configured: str | os.PathLike | None) -> Path:
    """Directory for derived model files: the setting, else ``$XDG_CACHE_HOME/visualsearch``."""
    if configured:
        path = Path(configured)
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visualsearch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cpu_threads(configured: int | None) -> int:
    """Threads for one encoder: the option, else the CPUs this process may use."""
    if configured:
        return int(configured)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class SentenceTransformerModel:
    """What the encoders wrapping a ``sentence_transformers.SentenceTransformer`` share.

    The options, one model per process loaded on first use (torch and sentence-transformers
    are imported then), and encoding a batch into unit rows. A subclass calls ``_configure``
    in its ``__init__`` and sets ``dimensions``.
    """

    dimensions: int

    def _configure(
        self,
        model: str,
        local_dir: Path | None,
        *,
        device: str,
        threads: int | None,
        batch_size: int,
    ) -> None:
        self.model_name = str(model)
        self._local_dir = local_dir
        self.device = device
        self.threads = threads
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                import torch
                from sentence_transformers import SentenceTransformer

                torch.set_num_threads(cpu_threads(self.threads))
                source = str(self._local_dir or self.model_name)
                self._model = SentenceTransformer(source, device=self.device)
        return self._model

    def _encode(self, items: Sequence) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        rows = self._load().encode(
            list(items), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return l2_normalize(rows)
