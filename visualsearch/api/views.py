"""API views: similar products, search by photo, search by description.

Permission and throttle classes come from ``API_PERMISSION_CLASSES`` and
``API_THROTTLE_CLASSES``, read on every request. Every input problem answers 400 with a
message naming the parameter; an unknown product answers 404.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import (
    ImproperlyConfigured,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
    ValidationError,
)
from django.db.models import QuerySet
from django.template.defaultfilters import filesizeformat
from django.utils.module_loading import import_string
from drf_spectacular.utils import extend_schema
from PIL import Image
from rest_framework import exceptions, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from visualsearch.api.schema import (
    ENCODER_UNAVAILABLE,
    ERROR_RESPONSES,
    NOT_FOUND,
    UNSUPPORTED_MEDIA_TYPE,
    VALIDATION_ERROR,
)
from visualsearch.api.serializers import (
    CutoffParamsSerializer,
    ImageSearchSerializer,
    SearchResultsSerializer,
    TextSearchSerializer,
)
from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import TextEncodingNotSupported
from visualsearch.encoders.remote import RemoteEncoderError, public_reason
from visualsearch.ingest.images import InvalidCrop, InvalidImage, open_query_image
from visualsearch.query import search, search_by_text, similar_products
from visualsearch.query.cutoff import Cutoff
from visualsearch.web.display import attach_thumbnails, product_queryset
from visualsearch.web.guards import UploadLimit

#: Query photos are shrunk to this longest side, and long thin ones padded to at most this
#: aspect ratio, before encoding: the encoders work at a few hundred pixels, and a 40,000 x 1
#: photo would otherwise blow up to gigabytes in their own resize (CLIP) or padding.


class TextSearchUnavailable(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "Search by text is not available with this encoder."
    default_code = "text_search_unavailable"


class EncoderUnavailable(exceptions.APIException):
    """The remote inference endpoint (``QUERY_ENCODER = "remote"``) is down or unusable."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Search is unavailable right now: try again in a moment."
    default_code = "encoder_unavailable"


class VisualSearchAPIView(APIView):
    """Base view: settings-driven permissions and throttles, JSON 400s for oversized bodies."""

    def get_permissions(self) -> list:
        return [cls() for cls in _classes("API_PERMISSION_CLASSES")]

    def get_throttles(self) -> list:
        return [cls() for cls in _classes("API_THROTTLE_CLASSES")]

    def get_queryset(self) -> QuerySet:
        """Products that may be shown (and looked up): ``PRODUCT_QUERYSET``'s."""
        return product_queryset(getattr(self, "request", None))

    def get_product(self, pk: str) -> Any:
        """The product with primary key ``pk`` (from the URL), else a 404."""
        queryset = self.get_queryset()
        if "\x00" not in pk:  # Postgres cannot even compare such a string
            try:
                return queryset.get(pk=queryset.model._meta.pk.to_python(pk))
            except (ValidationError, queryset.model.DoesNotExist):
                pass
        raise exceptions.NotFound(f"There is no product with id {pk[:100]!r}.")

    def handle_exception(self, exc: Exception) -> Response:
        # Django refuses these bodies while parsing; they are the client's fault, not a 500.
        if isinstance(exc, RequestDataTooBig):
            limit = _size(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
            exc = exceptions.ParseError(
                f"The request is too large: its form fields other than files may hold at most "
                f"{limit} together."
            )
        elif isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
            exc = exceptions.ParseError("The request has too many form fields or files.")
        elif isinstance(exc, RemoteEncoderError):  # the inference endpoint: 503, not a 500
            exc = EncoderUnavailable(
                f"Search is unavailable right now ({public_reason(exc)}): try again in a moment."
            )
        response = super().handle_exception(exc)
        if isinstance(exc, EncoderUnavailable):
            response["Retry-After"] = "10"
        return response

    def validated(self, serializer_class: type[Serializer], data: Any) -> dict[str, Any]:
        serializer = serializer_class(data=data, context={"request": self.request})
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def respond(self, products: list, cutoff: Cutoff | None = None) -> Response:
        """The results, ended by the relevance ``cutoff`` when one is given (after the k-NN
        fetched ``limit`` of them)."""
        if cutoff is not None:
            products = cutoff.apply(products)
        products = attach_thumbnails(products)
        serializer = SearchResultsSerializer(
            {"count": len(products), "results": products}, context={"request": self.request}
        )
        return Response(serializer.data)


class SimilarProductsView(VisualSearchAPIView):
    @extend_schema(
        operation_id="visualsearch_similar_products",
        summary="Products that look like a product",
        description=(
            "The products whose images are nearest to this product's images (the product "
            "itself excluded), best first. An empty list while the product has no embedding."
        ),
        parameters=[CutoffParamsSerializer],
        responses={
            200: SearchResultsSerializer,
            400: VALIDATION_ERROR,
            404: NOT_FOUND,
            **ERROR_RESPONSES,
        },
        tags=["visualsearch"],
    )
    def get(self, request: Request, pk: str) -> Response:
        product = self.get_product(pk)
        params = self.validated(CutoffParamsSerializer, request.query_params)
        products = similar_products(
            product, params["limit"], queryset=self.get_queryset(), **params["filters"]
        )
        return self.respond(products, params["cutoff"])


class TextSearchView(VisualSearchAPIView):
    @extend_schema(
        operation_id="visualsearch_search_text",
        summary="Search products by description",
        description=(
            "Products matching the description, best first: hybrid text search (full-text "
            "and text vectors of product names and descriptions, fused by reciprocal rank) "
            "where a text model is configured, else the image encoder's text tower (CLIP). "
            "With neither, the answer is a 400 saying so."
        ),
        parameters=[TextSearchSerializer],
        responses={
            200: SearchResultsSerializer,
            400: VALIDATION_ERROR,
            503: ENCODER_UNAVAILABLE,
            **ERROR_RESPONSES,
        },
        tags=["visualsearch"],
    )
    def get(self, request: Request) -> Response:
        params = self.validated(TextSearchSerializer, request.query_params)
        try:
            products = search_by_text(
                params["q"], params["limit"], queryset=self.get_queryset(), **params["filters"]
            )
        except TextEncodingNotSupported as exc:
            raise TextSearchUnavailable(f"Search by text is not available here: {exc}") from None
        return self.respond(products, params["cutoff"])


class ImageSearchView(VisualSearchAPIView):
    parser_classes = [MultiPartParser]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Before anything reads the body (session authentication's CSRF check may).
        self.upload_limit = UploadLimit(int(visualsearch_settings.MAX_IMAGE_BYTES), max_files=1)
        request.upload_handlers.insert(0, self.upload_limit)
        super().initial(request, *args, **kwargs)

    @extend_schema(
        operation_id="visualsearch_search_image",
        summary="Search products by photo",
        description=(
            "Products whose images look most like the uploaded photo, best first. Optionally "
            "searches only a box of the photo: `crop_x`, `crop_y`, `crop_width` and "
            "`crop_height` in pixels of the upright (EXIF-rotated) photo, all four or none. "
            "`limit` and the filters are form fields too."
        ),
        request={"multipart/form-data": ImageSearchSerializer},
        responses={
            200: SearchResultsSerializer,
            400: VALIDATION_ERROR,
            415: UNSUPPORTED_MEDIA_TYPE,
            503: ENCODER_UNAVAILABLE,
            **ERROR_RESPONSES,
        },
        tags=["visualsearch"],
    )
    def post(self, request: Request) -> Response:
        data = request.data
        if self.upload_limit.extra_files:
            count = self.upload_limit.files
            raise exceptions.ValidationError(
                {"image": [f"Send one file per search, the photo: this request has {count}."]}
            )
        if self.upload_limit.too_large:
            limit = _size(self.upload_limit.max_bytes)
            message = f"The file is larger than the {limit} limit."
            raise exceptions.ValidationError(
                {name: [message] for name in sorted(self.upload_limit.too_large)}
            )
        params = self.validated(ImageSearchSerializer, data)
        image = self.open_image(params["image"], params["crop"])
        products = search(
            image=image, k=params["limit"], queryset=self.get_queryset(), **params["filters"]
        )
        return self.respond(products, params["cutoff"])

    def open_image(self, upload: Any, crop: tuple[int, int, int, int] | None) -> Image.Image:
        """Decode, crop and shrink the upload; ``ValidationError`` saying what is wrong."""
        try:
            return open_query_image(upload, crop=crop)
        except InvalidCrop as exc:
            raise exceptions.ValidationError(
                {api_settings.NON_FIELD_ERRORS_KEY: [str(exc)]}
            ) from None
        except InvalidImage as exc:
            raise exceptions.ValidationError({"image": [str(exc)]}) from None


def _classes(key: str) -> list[type]:
    paths = getattr(visualsearch_settings, key)
    if isinstance(paths, str) or not isinstance(paths, list | tuple):
        raise ImproperlyConfigured(f"VISUALSEARCH[{key!r}] must be a list of dotted paths.")
    try:
        return [import_string(path) if isinstance(path, str) else path for path in paths]
    except ImportError as exc:
        raise ImproperlyConfigured(f"VISUALSEARCH[{key!r}]: {exc}") from exc


def _size(count: int) -> str:
    return filesizeformat(count).replace("\xa0", " ")
