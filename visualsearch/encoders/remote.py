"""Encoding on another machine, over the KServe v2 / Open Inference Protocol REST API.

``KServeV2Encoder`` sends the photos, as decoded by visualsearch (within its pixel limits,
shrunk and padded by ``fit_for_encoder``), to ``POST /v2/models/{model}/infer`` of a model
server and reads the vectors back. The server runs the encoder, its own preprocessing
included (``visualsearch.contrib.kserve_model`` serves the project's configured encoder), so
a web host needs neither torch nor the model files, and a vector from the endpoint is the one
the same encoder gives in-process: the photo travels lossless, as a base64 binary PPM (raw RGB
with its size) in a ``BYTES`` tensor ``IMAGE``; texts as UTF-8 strings in ``TEXT``. The vectors
come back as the ``FP32`` tensor ``EMBEDDING`` in the binary tensor extension.

The model id is the served model's: each response carries it (``parameters.model_id``), and a
response of another model than the one this encoder reported raises, so vectors of two models
are never mixed. ``QUERY_ENCODER = "remote"`` makes query photos go to ``REMOTE_ENCODER``'s
endpoint (:func:`query_encoder`); workers use it by naming this class as ``ENCODER``.

Errors: :class:`RemoteEncoderUnavailable` (the endpoint cannot be reached, times out or answers
5xx after ``retries`` more tries with backoff) is a ``ConnectionError``, so the embedding task
retries it like other transient failures, and the API and the search page answer 503;
:class:`RemoteEncoderError` is a wrong answer (shape, size, model).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS
from PIL import Image

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders.base import BaseEncoder
from visualsearch.encoders.serving import serving_encoder

logger = logging.getLogger(__name__)

IMAGE_INPUT, TEXT_INPUT, OUTPUT = "IMAGE", "TEXT", "EMBEDDING"
#: The binary tensor extension's header: length of the JSON part before the raw tensors.
HEADER_LENGTH = "Inference-Header-Content-Length"


class RemoteEncoderError(Exception):
    """The inference endpoint answered something this encoder cannot use."""


class RemoteEncoderUnavailable(RemoteEncoderError, ConnectionError):
    """The inference endpoint is down, too slow or failing (5xx): worth trying again later."""


def public_reason(exc: RemoteEncoderError) -> str:
    """What a shopper is told about ``exc`` (503 bodies): no host names, ids or shapes, which
    are logged instead (``visualsearch.encoders.remote``, level error)."""
    logger.error("visualsearch: query encoding failed: %s", exc)
    if isinstance(exc, RemoteEncoderUnavailable):
        return "the image encoder cannot be reached"
    return "the image encoder is misconfigured"


def image_payload(image: Image.Image) -> str:
    """``image`` as the ``IMAGE`` tensor carries it: a base64 binary PPM of its RGB pixels."""
    out = io.BytesIO()
    image.convert("RGB").save(out, "PPM")
    return base64.b64encode(out.getvalue()).decode("ascii")


def decode_payload(payload: str | bytes, max_pixels: int) -> Image.Image:
    """The image of one ``IMAGE`` element (server side); ``ValueError`` when it is not one."""
    try:
        data = base64.b64decode(payload, validate=True)
        image = Image.open(io.BytesIO(data), formats=["PPM"])
    except (ValueError, OSError) as exc:
        raise ValueError(f"an IMAGE element is not a base64 binary PPM: {exc}") from None
    if image.width * image.height > max_pixels:
        raise ValueError(f"an image of {image.width}x{image.height} pixels is too large")
    return image.convert("RGB")


class KServeV2Encoder(BaseEncoder):
    """An encoder served by a KServe v2 (Open Inference Protocol) HTTP endpoint.

    ``url`` is the server's base URL (``http://gpu-1:8080``), ``model`` the served model's name.
    ``dimensions`` saves the metadata request at start-up (it is checked against the server's
    on first use). ``timeout`` bounds each read, ``connect_timeout`` each connection; failed
    connections, time-outs and 5xx answers are tried ``retries`` more times, ``backoff``
    seconds apart, doubling. At most ``batch_size`` images go in one request.
    """

    def __init__(
        self,
        url: str,
        model: str = "visualsearch",
        *,
        dimensions: int | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        retries: int = 2,
        backoff: float = 0.2,
        batch_size: int = 32,
    ) -> None:
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImproperlyConfigured(f"The inference endpoint URL {url!r} is not http(s)://host.")
        self.url, self.model = str(url).rstrip("/"), str(model)
        self._parts = parts
        self._dimensions = int(dimensions) if dimensions else None
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)
        self.retries, self.backoff, self.batch_size = int(retries), float(backoff), int(batch_size)
        self._metadata: dict | None = None
        self._model_id: str | None = None
        self._local = threading.local()  # one kept-alive connection per thread

    # --- what the endpoint serves ---------------------------------------------------------

    @property
    def dimensions(self) -> int:  # type: ignore[override]
        """The vectors' size: the ``dimensions`` option, else the served model's metadata."""
        return self._dimensions or self._served_dimensions()

    @property
    def supports_text(self) -> bool:  # type: ignore[override]
        """Whether the served model takes texts (its metadata lists a ``TEXT`` input)."""
        return any(item.get("name") == TEXT_INPUT for item in self.metadata().get("inputs", []))

    @property
    def model_id(self) -> str:
        """The served model's id, asked once (an empty request) and then checked on every
        answer; a process keeps it until it restarts, like the in-process encoders."""
        if self._model_id is None:
            rows, model_id = self._infer(IMAGE_INPUT, [])
            self._check_dimensions(rows)
            self._model_id = model_id
        return self._model_id

    def metadata(self) -> dict:
        """``GET /v2/models/{model}``, read once."""
        if self._metadata is None:
            self._metadata = self._get_json(f"/v2/models/{quote(self.model)}")
        return self._metadata

    def ready(self) -> bool:
        """Whether ``GET /v2/health/ready`` answers 200 (no retries)."""
        try:
            status, _headers, _body = self._exchange("GET", "/v2/health/ready", None, {})
        except OSError:
            return False
        return status == 200

    def warm_up(self) -> None:
        """Check now that the endpoint serves a model of the expected size, and learn its id."""
        self._served_dimensions()
        self.model_id  # noqa: B018 (asks the server)

    def __repr__(self) -> str:  # no request: what is known so far
        return f"<KServeV2Encoder {self.url} {self.model!r} {self._model_id or '(not asked yet)'}>"

    # --- encoding ---------------------------------------------------------------------------

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        payloads = [image_payload(image) for image in images]
        return self._encode(IMAGE_INPUT, payloads)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not self.supports_text:
            return super().encode_texts(texts)  # raises TextEncodingNotSupported
        return self._encode(TEXT_INPUT, [str(text) for text in texts])

    def _encode(self, name: str, items: list[str]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        parts, expected = [], self.model_id
        for start in range(0, len(items), self.batch_size):
            rows, model_id = self._infer(name, items[start : start + self.batch_size])
            if model_id != expected:
                raise RemoteEncoderError(
                    f"The inference endpoint {self.url} now serves {model_id!r}, not "
                    f"{expected!r}: restart this process to use the new model."
                )
            self._check_dimensions(rows)
            parts.append(rows)
        return np.concatenate(parts)

    def _infer(self, name: str, items: list[str]) -> tuple[np.ndarray, str]:
        """One infer request: ``(n, d)`` float32 rows and the model id of the answer."""
        body = json.dumps(
            {
                "inputs": [
                    {"name": name, "datatype": "BYTES", "shape": [len(items)], "data": items}
                ],
                "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
            }
        ).encode()
        path = f"/v2/models/{quote(self.model)}/infer"
        headers, data = self._call("POST", path, body, {"Content-Type": "application/json"})
        return parse_response(data, headers.get(HEADER_LENGTH.lower()), len(items), self.url)

    def _served_dimensions(self) -> int:
        for output in self.metadata().get("outputs", []):
            shape = output.get("shape") or []
            if output.get("name") == OUTPUT and len(shape) == 2 and int(shape[1]) > 0:
                size = int(shape[1])
                if self._dimensions and size != self._dimensions:
                    raise RemoteEncoderError(
                        f"The model {self.model!r} at {self.url} returns {size}-d vectors, "
                        f"not {self._dimensions} (the dimensions option)."
                    )
                return size
        raise RemoteEncoderError(
            f"The metadata of {self.model!r} at {self.url} has no {OUTPUT} output of shape "
            f"[-1, d]: {self.metadata().get('outputs')!r}"
        )

    def _check_dimensions(self, rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[1] != self.dimensions:
            raise RemoteEncoderError(
                f"The inference endpoint {self.url} returned vectors of shape {rows.shape}, "
                f"expected {self.dimensions}-d rows."
            )

    # --- HTTP ---------------------------------------------------------------------------------

    def _get_json(self, path: str) -> dict:
        _headers, data = self._call("GET", path, None, {})
        try:
            return json.loads(data)
        except ValueError as exc:
            raise RemoteEncoderError(f"{self.url}{path} did not answer JSON: {exc}") from None

    def _call(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple:
        """``(headers, body)`` of a 200 answer; retries connection errors, time-outs and 5xx."""
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, answer_headers, data = self._exchange(method, path, body, headers)
            except OSError as exc:  # refused, reset, timed out, unknown host
                reason = f"{type(exc).__name__}: {exc}".removesuffix(": ")
                continue
            if status == 200:
                return answer_headers, data
            detail = _error_text(data)
            if status < 500:
                raise RemoteEncoderError(f"{method} {self.url}{path} answered {status}: {detail}")
            reason = f"HTTP {status}: {detail}"
        raise RemoteEncoderUnavailable(
            f"The inference endpoint {self.url} (model {self.model!r}) is unavailable after "
            f"{self.retries + 1} tries: {reason}"
        )

    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple:
        """One request on this thread's kept-alive connection. A kept connection the server
        has closed meanwhile (idle time-out) is replaced at once, without counting a try."""
        kept = getattr(self._local, "connection", None)
        try:
            return self._send(kept or self._connect(), method, path, body, headers)
        except OSError:
            if kept is None:
                raise
        return self._send(self._connect(), method, path, body, headers)

    def _connect(self) -> http.client.HTTPConnection:
        secure = self._parts.scheme == "https"
        kind = http.client.HTTPSConnection if secure else http.client.HTTPConnection
        connection = kind(self._parts.hostname, self._parts.port, timeout=self.connect_timeout)
        connection.connect()  # within connect_timeout; then each read within timeout
        connection.sock.settimeout(self.timeout)
        self._local.connection = connection
        return connection

    def _send(self, connection, method: str, path: str, body: bytes | None, headers: dict):
        try:
            connection.request(method, self._parts.path.rstrip("/") + path, body, headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            self._local.connection = None
            if isinstance(exc, OSError):
                raise
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        if response.will_close:
            connection.close()
            self._local.connection = None
        return response.status, {key.lower(): value for key, value in response.getheaders()}, data


def parse_response(data: bytes, header_length: str | None, count: int, url: str) -> tuple:
    """``(rows, model_id)`` of an infer answer, JSON or with binary tensors; raises
    :class:`RemoteEncoderError` when it does not hold ``count`` rows of ``EMBEDDING``."""
    length = int(header_length) if header_length else len(data)
    try:
        answer = json.loads(data[:length])
        output = next(item for item in answer["outputs"] if item["name"] == OUTPUT)
        shape = [int(size) for size in output["shape"]]
        if "data" in output:
            rows = np.asarray(output["data"], dtype=np.float32).reshape(shape)
        else:
            size = int(output.get("parameters", {})["binary_data_size"])
            rows = np.frombuffer(data[length : length + size], dtype="<f4").reshape(shape)
        model_id = str((answer.get("parameters") or {})["model_id"])
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise RemoteEncoderError(
            f"The inference endpoint {url} answered an infer request with no usable "
            f"{OUTPUT} tensor and parameters.model_id ({type(exc).__name__}: {exc})."
        ) from None
    if rows.ndim != 2 or rows.shape[0] != count:
        raise RemoteEncoderError(
            f"The inference endpoint {url} returned {OUTPUT} of shape {list(rows.shape)} for "
            f"{count} input(s)."
        )
    return np.array(rows, dtype=np.float32), model_id


def _error_text(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", data[:300]))
    except (ValueError, AttributeError):
        return data[:300].decode("utf-8", "replace")


# --- which encoder reads query photos -------------------------------------------------------


@lru_cache(maxsize=1)
def remote_encoder() -> KServeV2Encoder:
    """The encoder of ``REMOTE_ENCODER`` (``{"url": …, "model": …, "timeout": …}``)."""
    options = visualsearch_settings.REMOTE_ENCODER
    if not isinstance(options, dict) or not options.get("url"):
        raise ImproperlyConfigured(
            'VISUALSEARCH["REMOTE_ENCODER"] must be a dict with at least "url" (the KServe v2 '
            f'server, e.g. "http://gpu-1:8080") when QUERY_ENCODER is "remote"; got {options!r}.'
        )
    try:
        return KServeV2Encoder(**options)
    except TypeError as exc:
        raise ImproperlyConfigured(f'VISUALSEARCH["REMOTE_ENCODER"]: {exc}') from exc


def query_encoder(using: str = DEFAULT_DB_ALIAS) -> BaseEncoder:
    """The encoder that reads query photos and words: the serving one in this process
    (``QUERY_ENCODER = "local"``), or the remote endpoint (``"remote"``), which must serve
    the model of the vectors searched (else :class:`RemoteEncoderError`)."""
    serving = serving_encoder(using)
    where = visualsearch_settings.QUERY_ENCODER
    if where == "local" or isinstance(serving, KServeV2Encoder):
        return serving
    if where != "remote":
        raise ImproperlyConfigured(
            f'VISUALSEARCH["QUERY_ENCODER"] must be "local" or "remote", got {where!r}.'
        )
    remote = remote_encoder()
    if remote.model_id != serving.model_id:
        raise RemoteEncoderError(
            f"The inference endpoint {remote.url} serves {remote.model_id!r}, but the vectors "
            f"searched are {serving.model_id!r}: serve that model there, or search locally."
        )
    return remote


def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "VISUALSEARCH":
        remote_encoder.cache_clear()


setting_changed.connect(_reset, dispatch_uid="visualsearch.encoders.remote.reset")
