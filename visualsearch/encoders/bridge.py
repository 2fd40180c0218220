"""The learned text → image bridge at query time: loaded, checked against the encoders, cached.

Trained by ``manage.py visualsearch_bridge`` (``visualsearch.learning.bridge``); a
:class:`~visualsearch.encoders.projection.Projection` whose metadata names the text and image
model ids it was trained for. A file trained for other models is an error (check
``visualsearch.E005``), never a silently wrong ranking.
"""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders.projection import Projection, ProjectionFile
from visualsearch.storage.lookup import get_text_model

#: ``meta["kind"]`` of a bridge file (a catalog projection from visualsearch_adapt is not one).
KIND = "text-bridge"

_files: dict[Path, ProjectionFile] = {}
_files_lock = threading.Lock()


def load_bridge(path: str | os.PathLike) -> Projection:
    """The bridge in ``path``, checked against the configured text and image encoders.

    Re-read when the file is replaced. Raises ``ImproperlyConfigured`` with the remedy when
    the file is missing, unreadable, not a bridge, or trained for other model ids.
    """
    from visualsearch.encoders import get_encoder, get_text_encoder

    path = Path(path)
    retrain = f"train it with `manage.py visualsearch_bridge --out {path}`"
    with _files_lock:
        file = _files.setdefault(path, ProjectionFile(path))
    try:
        bridge = file.get(_validate_kind)
    except FileNotFoundError:
        raise ImproperlyConfigured(
            f"The text bridge {path} (VISUALSEARCH['TEXT_BRIDGE']) does not exist: {retrain}."
        ) from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ImproperlyConfigured(
            f"The text bridge {path} (VISUALSEARCH['TEXT_BRIDGE']) cannot be read ({exc}): "
            f"{retrain}."
        ) from exc
    text_id, image_id = get_text_encoder().model_id, get_encoder().model_id
    trained = (bridge.meta.get("text_model"), bridge.meta.get("image_model"))
    if trained != (text_id, image_id):
        raise ImproperlyConfigured(
            f"The text bridge {path} was trained for text model {trained[0]!r} and image "
            f"model {trained[1]!r}, but the configured encoders are {text_id!r} and "
            f"{image_id!r}: its vectors would not fit. Retrain it once the catalog is "
            f"embedded by the configured encoders ({retrain}), or set "
            "VISUALSEARCH['TEXT_BRIDGE'] to None."
        )
    return bridge


def _validate_kind(projection: Projection) -> None:
    if projection.meta.get("kind") != KIND:
        raise ValueError("not a text bridge (a catalog projection from visualsearch_adapt?)")


def get_bridge() -> Projection | None:
    """The configured bridge (``VISUALSEARCH["TEXT_BRIDGE"]``), or None when it is unset.

    Raises ``ImproperlyConfigured`` for a bad setting or file (see :func:`load_bridge`).
    """
    path = visualsearch_settings.TEXT_BRIDGE
    if path is None:
        return None
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ImproperlyConfigured(
            "VISUALSEARCH['TEXT_BRIDGE'] must be the path of a file written by "
            f"`manage.py visualsearch_bridge`, or None; got {path!r}."
        )
    if get_text_model() is None:
        raise ImproperlyConfigured(
            "VISUALSEARCH['TEXT_BRIDGE'] is fused into text search: set "
            "VISUALSEARCH['TEXT_MODEL'] too, or set TEXT_BRIDGE to None."
        )
    return load_bridge(path)


def check_settings() -> None:
    """Raise ``ImproperlyConfigured`` when ``TEXT_BRIDGE`` is set but unusable (check E005)."""
    get_bridge()
