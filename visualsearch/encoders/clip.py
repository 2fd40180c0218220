"""CLIP through sentence-transformers: images and texts in one space (the production default).

``model`` is a model name (``clip-ViT-B-32`` by default, fetched by sentence-transformers from
its hub on first use) or the path of a local sentence-transformers model directory, for
machines that cannot reach a hub. torch and sentence-transformers are imported on first use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from django.core.exceptions import ImproperlyConfigured
from PIL import Image

from visualsearch.encoders.base import BaseEncoder, SentenceTransformerModel

#: Output sizes of the CLIP models sentence-transformers publishes, known without loading them.
KNOWN_DIMENSIONS = {
    "clip-ViT-B-32": 512,
    "clip-ViT-B-16": 512,
    "clip-ViT-L-14": 768,
    "clip-ViT-B-32-multilingual-v1": 512,
}


class CLIPEncoder(SentenceTransformerModel, BaseEncoder):
    """CLIP image and text tower via ``sentence_transformers.SentenceTransformer``."""

    supports_text = True

    def __init__(
        self,
        model: str = "clip-ViT-B-32",
        *,
        dimensions: int | None = None,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        local_dir = Path(model) if Path(model).is_dir() else None
        self._configure(model, local_dir, device=device, threads=threads, batch_size=batch_size)
        self.dimensions = dimensions or self._read_dimensions()

    def _read_dimensions(self) -> int:
        if self._local_dir is None:
            name = self.model_name.rsplit("/", 1)[-1]
            if name in KNOWN_DIMENSIONS:
                return KNOWN_DIMENSIONS[name]
            raise ImproperlyConfigured(
                f"Unknown CLIP model {self.model_name!r}: pass its output size as "
                "VISUALSEARCH['ENCODER_OPTIONS']['dimensions'], or give a local model directory."
            )
        for config in self._config_files():
            data = json.loads(config.read_text())
            if "projection_dim" in data:
                return int(data["projection_dim"])
        raise ImproperlyConfigured(
            f"{self._local_dir} does not look like a sentence-transformers CLIP model: "
            "no config.json with a projection_dim."
        )

    def _config_files(self) -> list[Path]:
        assert self._local_dir is not None
        return sorted(self._local_dir.glob("config.json")) + sorted(
            self._local_dir.glob("*/config.json")
        )

    @cached_property
    def model_id(self) -> str:
        """Computed once: a process keeps the weights it loaded until it restarts."""
        if self._local_dir is None:
            return f"clip:{self.model_name}"
        # A local directory is identified by its name and a digest of its configuration and
        # weight sizes, so retrained weights in the same folder count as a new model.
        digest = hashlib.sha256()
        for path in self._config_files() + sorted(self._local_dir.glob("**/*.safetensors")):
            digest.update(path.name.encode())
            digest.update(
                path.read_bytes() if path.suffix == ".json" else str(path.stat().st_size).encode()
            )
        return f"clip:{self._local_dir.name}:{digest.hexdigest()[:12]}"

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._encode(images)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)
