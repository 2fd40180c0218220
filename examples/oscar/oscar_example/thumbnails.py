"""An Oscar thumbnailer that serves the original image files.

Oscar's templates resize images through sorl-thumbnail or easy-thumbnails; this example has
neither installed, so ``OSCAR_THUMBNAILER`` points here and the templates get the originals.
A real shop installs one of the two and drops this module.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from oscar.core.thumbnails import AbstractThumbnailer


class _Missing:
    """Oscar's "image not found" placeholder: a path under ``MEDIA_URL``, not a file field."""

    def __init__(self, name: str) -> None:
        self.url = settings.MEDIA_URL + name


class OriginalImage(AbstractThumbnailer):
    """Returns the source itself (anything with a ``url``) whatever size is asked for."""

    def generate_thumbnail(self, source: Any, **opts: Any) -> Any:
        return _Missing(source) if isinstance(source, str) else source

    def delete_thumbnails(self, source: Any) -> None:
        return None
