"""An encoder adapted to the catalog: a base encoder followed by a learned projection.

    VISUALSEARCH = {
        "ENCODER": "visualsearch.encoders.adapted.AdaptedEncoder",
        "ENCODER_OPTIONS": {
            "base": "visualsearch.encoders.efficientnet.EfficientNetLite0Encoder",
            "projection": "/var/lib/shop/visualsearch-projection.npz",
        },
    }

The projection file comes from ``manage.py visualsearch_adapt``. Its content hash is part of
the model id, so a retrained projection is a new encoder generation: it is built from the
stored base features (:class:`~visualsearch.models.EncodedVector`) while queries keep being
served by the previous projection (:mod:`visualsearch.ingest.switch`). Processes notice a
replaced file on their next use; a batch reads it once (:meth:`AdaptedEncoder.snapshot`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from PIL import Image

from visualsearch.encoders.base import BaseEncoder
from visualsearch.encoders.projection import ProjectionFile


class AdaptedEncoder(BaseEncoder):
    """``base`` encoder (dotted path + ``base_options``) followed by the ``projection`` file."""

    supports_text = False

    def __init__(
        self,
        *,
        base: str,
        projection: str | os.PathLike,
        base_options: dict[str, Any] | None = None,
        dimensions: int | None = None,
    ) -> None:
        try:
            base_class = import_string(base)
        except ImportError as exc:
            raise ImproperlyConfigured(f"AdaptedEncoder base {base!r} cannot be imported.") from exc
        self.base: BaseEncoder = base_class(**(base_options or {}))
        self.projection_path = Path(projection)
        # The projection keeps the base size unless trained otherwise; known without the file,
        # so that Django starts (and visualsearch_adapt runs) before the first training.
        self.dimensions = dimensions or self.base.dimensions
        self._file = ProjectionFile(self.projection_path)
        self._fixed: Any = None  # set on snapshots

    def projection(self) -> Any:
        """The current projection, reloaded when the file was replaced (a snapshot's own)."""
        if self._fixed is not None:
            return self._fixed
        try:
            return self._file.get(self._validate)
        except FileNotFoundError:
            raise ImproperlyConfigured(
                f"The projection {self.projection_path} does not exist yet: train it with "
                "`manage.py visualsearch_adapt`."
            ) from None

    def _validate(self, projection: Any) -> None:
        if projection.dimensions != self.dimensions:
            raise ImproperlyConfigured(
                f"{self.projection_path} makes {projection.dimensions}-d vectors; "
                f"{self.dimensions}-d are configured."
            )
        if projection.input_dimensions != self.base.dimensions:
            raise ImproperlyConfigured(
                f"{self.projection_path} was trained on {projection.input_dimensions}-d "
                f"features; {self.base.model_id} makes {self.base.dimensions}-d ones."
            )

    @property
    def model_id(self) -> str:
        return f"{self.base.model_id}+adapted:{self.projection().digest[:12]}"

    def snapshot(self) -> AdaptedEncoder:
        """A copy bound to the projection in the file now (one read for a whole batch)."""
        fixed = copy.copy(self)
        fixed._fixed = self.projection()
        return fixed

    def frozen_options(self, options: dict) -> dict:
        """The options with ``projection`` pointing at a copy of the file named after its
        content (``<name>.<digest>.npz`` beside it), which a retrain does not overwrite."""
        projection = self.projection()
        kept = self.projection_path.with_name(
            f"{self.projection_path.stem}.{projection.digest[:12]}{self.projection_path.suffix}"
        )
        if not kept.exists():  # written from the weights read, whatever the file holds now
            projection.save(kept)
        return {**options, "projection": str(kept)}

    def derive(self, vector: np.ndarray, model_id: str) -> np.ndarray | None:
        if model_id != self.base.model_id:
            return None
        return self.project(np.asarray(vector, dtype=np.float32)[None, :])[0]

    def project(self, features: np.ndarray) -> np.ndarray:
        """The adapted vectors of ``(n, base dimensions)`` base features."""
        return self.projection().apply(features)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.project(self.base.encode_images(images))
