"""What every search surface needs against abuse: the API's throttle and the upload limits.

The API views apply both themselves; :func:`search_view` applies them to a search page of the
host's (the demo shop's ``/search/``), so that the HTML form is no cheaper a way in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders.remote import RemoteEncoderError, public_reason


class UploadLimit(FileUploadHandler):
    """Keeps at most ``max_files`` uploaded files of the request, each cut after
    ``max_bytes`` + 1 bytes (so that the decoder can still say it is too large); the rest of
    the body is read and dropped.

    Without it Django writes every file of any size to a temporary file, up to
    ``DATA_UPLOAD_MAX_NUMBER_FILES`` of them, before the view runs. ``too_large`` names the
    fields of the files cut, ``extra_files`` counts the files dropped.
    """

    def __init__(self, max_bytes: int, max_files: int = 1, request: Any = None) -> None:
        super().__init__(request)
        self.max_bytes, self.max_files = max_bytes, max_files
        self.files, self.extra_files = 0, 0
        self.too_large: set[str] = set()

    def new_file(self, field_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, *args, **kwargs)
        self.files += 1
        if self.files > self.max_files:
            self.extra_files += 1
            raise SkipFile

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        if start > self.max_bytes:
            return None  # cut: the handlers after this one never see the rest
        if start + len(raw_data) > self.max_bytes:
            self.too_large.add(self.field_name)
            return raw_data[: self.max_bytes + 1 - start]
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def throttles() -> list:
    """Instances of ``API_THROTTLE_CLASSES`` (DRF throttles): one budget for every surface."""
    paths = visualsearch_settings.API_THROTTLE_CLASSES
    if isinstance(paths, str) or not isinstance(paths, list | tuple):
        raise ImproperlyConfigured('VISUALSEARCH["API_THROTTLE_CLASSES"] must be a list.')
    try:
        return [(import_string(p) if isinstance(p, str) else p)() for p in paths]
    except ImportError as exc:
        raise ImproperlyConfigured(f'VISUALSEARCH["API_THROTTLE_CLASSES"]: {exc}') from exc


def search_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Decorate a search view (a page with :class:`~visualsearch.web.forms.ImageUploadForm`):
    searches (a POST, or a GET with a query string) count against the API's throttle and
    are answered 429 past it; one photo within ``MAX_IMAGE_BYTES`` is kept per request. An
    inference endpoint that is down (``QUERY_ENCODER = "remote"``) is answered 503.

    CSRF is still checked, after the upload handler is in place (Django's documented way to
    change upload handlers in a view).
    """
    protected = csrf_protect(view)

    @csrf_exempt
    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method != "GET" or request.GET:
            for throttle in throttles():
                if not throttle.allow_request(request, None):
                    return too_many_requests(throttle.wait())
        request.upload_handlers.insert(0, UploadLimit(int(visualsearch_settings.MAX_IMAGE_BYTES)))
        try:
            return protected(request, *args, **kwargs)
        except RemoteEncoderError as exc:  # QUERY_ENCODER "remote" and the endpoint is down
            return encoder_unavailable(exc)

    return guarded


def encoder_unavailable(exc: RemoteEncoderError) -> HttpResponse:
    """503 with ``Retry-After`` when the inference endpoint cannot encode the search."""
    response = HttpResponse(
        f"Search is unavailable right now ({public_reason(exc)}): try again in a moment.\n",
        status=503,
        content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = "10"
    return response


def too_many_requests(wait: float | None) -> HttpResponse:
    """429 with ``Retry-After`` (seconds), in words a shopper understands."""
    seconds = max(1, math.ceil(wait or 1))
    response = HttpResponse(
        f"Too many searches from your address: try again in {seconds} seconds.\n",
        status=429,
        content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = str(seconds)
    return response


def session_started(session: Any) -> bool:
    """Whether ``session`` exists already: a cookie came with the request, or something was
    stored in it during this one. Recommendations are remembered as shown only then, so
    that a visitor without cookies (a crawler, mostly) never starts a session."""
    return session is not None and bool(session.session_key or not session.is_empty())
