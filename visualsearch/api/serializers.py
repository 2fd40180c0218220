"""Request parameters and results of the visualsearch API.

The parameter serializers are built per request from the settings: ``limit`` is bounded by
``API_MAX_LIMIT`` and every ``FILTERS`` entry becomes a field, so the OpenAPI schema and the
validation always agree with the configuration.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from visualsearch.conf import visualsearch_settings
from visualsearch.ingest.images import MIN_CROP_SIDE
from visualsearch.query.cutoff import FORMS, InvalidCutoff, configured_cutoff, resolve_cutoff
from visualsearch.query.filters import LIST_LOOKUPS, Filter, InvalidFilter, get_filters
from visualsearch.web.display import product_name, product_price, product_url, thumbnail_url

#: Longest accepted text query, in characters (CLIP reads 77 tokens of it anyway).
MAX_QUERY_LENGTH = 1000
CROP_FIELDS = ("crop_x", "crop_y", "crop_width", "crop_height")


class FilterField(serializers.Field):
    """A product filter parameter, converted by its :class:`visualsearch.query.filters.Filter`."""

    def __init__(self, filter: Filter, **kwargs: Any) -> None:
        self.filter = filter
        kwargs.setdefault("required", False)
        if "help_text" not in kwargs:
            kwargs["help_text"] = f"Only products matching the lookup `{filter.lookup}`" + (
                " (comma-separated values)." if filter.lookup_name in LIST_LOOKUPS else "."
            )
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        try:
            return self.filter.convert(data)
        except InvalidFilter as exc:
            raise serializers.ValidationError(exc.message) from None

    def to_representation(self, value: Any) -> Any:
        return value


class SearchParamsSerializer(serializers.Serializer):
    """How many results, and the product filters the shop offers."""

    # ``limit`` and one field per VISUALSEARCH["FILTERS"] entry are added by get_fields();
    # validate() gathers the filter values into ``filters``: {lookup: value}.

    #: The setting ``limit`` defaults to (capped at ``API_MAX_LIMIT``).
    default_limit_setting = "API_DEFAULT_LIMIT"

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        maximum = int(visualsearch_settings.API_MAX_LIMIT)
        fields["limit"] = serializers.IntegerField(
            min_value=1,
            max_value=maximum,
            default=min(int(getattr(visualsearch_settings, self.default_limit_setting)), maximum),
            help_text=f"How many products to return, at most {maximum}.",
        )
        for item in get_filters():
            if item.param in fields:
                raise ImproperlyConfigured(
                    f'VISUALSEARCH["FILTERS"] uses {item.param!r}, a parameter the API already '
                    "has: choose another name."
                )
            fields[item.param] = FilterField(item)
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs["filters"] = {
            field.filter.lookup: attrs.pop(name)
            for name, field in self.fields.items()
            if isinstance(field, FilterField) and name in attrs
        }
        return attrs


@extend_schema_field({"type": "string", "maxLength": 50, "example": "0.94"})
class CutoffField(serializers.Field):
    """The ``cutoff`` parameter: a :class:`visualsearch.query.cutoff.Cutoff`, or None for off;
    absent or blank, the ``RELEVANCE_CUTOFF`` setting."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("default", configured_cutoff)  # called per request: settings may change
        kwargs.setdefault(
            "help_text",
            f"End the list where scores fall away from the top hit: {FORMS}. `on`: the "
            "shop's setting, else a ratio of 0.94. Absent: the `RELEVANCE_CUTOFF` setting "
            "(off unless the shop sets it). At least 3 results are kept.",
        )
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str) or "\x00" in data or len(data) > 50:
            raise serializers.ValidationError(f"A cut-off is {FORMS}.")
        try:
            return resolve_cutoff(data)
        except InvalidCutoff as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_representation(self, value: Any) -> Any:
        return "off" if value is None else str(value)


class CutoffParamsSerializer(SearchParamsSerializer):
    """How many results, the product filters, and where to cut the list (``cutoff``)."""

    cutoff = CutoffField()


#: What CharField accepts: no NUL character (and, for a query, not only white space).
NO_NUL = r"^[^\u0000]*$"
NOT_BLANK = r"^[^\u0000]*[^\u0000\s\u001c-\u001f\u0085][^\u0000]*$"


@extend_schema_field({"type": "string", "minLength": 1, "pattern": NOT_BLANK})
class QueryTextField(serializers.CharField):
    """A search text: some non-blank characters, no NUL."""


class TextSearchSerializer(CutoffParamsSerializer):
    """A description to search with, how many results, and product filters."""

    q = QueryTextField(
        max_length=MAX_QUERY_LENGTH, help_text="A description of the product, such as “red dress”."
    )


@extend_schema_field({"type": "string", "format": "binary"})
class UploadField(serializers.FileField):
    """An uploaded file (decoded by the view, so that every problem gets its own message)."""


class ImageSearchSerializer(CutoffParamsSerializer):
    """A photo (optionally a box of it) to search with, how many results, and product filters."""

    image = UploadField(
        help_text="The photo to search with (JPEG, PNG, WebP, GIF…); EXIF rotation is applied."
    )
    crop_x = serializers.IntegerField(
        required=False, min_value=0, help_text="Left edge of the crop box, in pixels."
    )
    crop_y = serializers.IntegerField(
        required=False, min_value=0, help_text="Top edge of the crop box, in pixels."
    )
    crop_width = serializers.IntegerField(
        required=False, min_value=MIN_CROP_SIDE, help_text="Width of the crop box, in pixels."
    )
    crop_height = serializers.IntegerField(
        required=False, min_value=MIN_CROP_SIDE, help_text="Height of the crop box, in pixels."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in CROP_FIELDS if name in attrs]
        if given and len(given) < len(CROP_FIELDS):
            raise serializers.ValidationError(
                "Give all four of crop_x, crop_y, crop_width and crop_height, or none "
                f"(got only {', '.join(given)})."
            )
        box = tuple(attrs.pop(name) for name in given)
        attrs["crop"] = box or None
        return super().validate(attrs)


class ProductIdField(serializers.ReadOnlyField):
    """The product's primary key (typed from the product model in the schema)."""

    def to_representation(self, value: Any) -> Any:
        return value if isinstance(value, int) else str(value)


class SearchResultSerializer(serializers.Serializer):
    """A matching product."""

    # Read through visualsearch.web.display, so any product model works.

    id = ProductIdField()
    name = serializers.CharField(read_only=True)
    url = serializers.URLField(read_only=True, allow_null=True, help_text="The product page.")
    thumbnail = serializers.URLField(
        read_only=True, allow_null=True, help_text="The product's first image, if it has one."
    )
    price = serializers.DecimalField(
        max_digits=None, decimal_places=None, read_only=True, allow_null=True
    )
    score = serializers.FloatField(
        read_only=True,
        help_text=(
            "Cosine similarity of the best-matching image, 1 is identical; for hybrid text "
            "searches the reciprocal-rank-fusion score scaled to 1 for a product ranked first "
            "by every ranking fused."
        ),
    )

    def to_representation(self, product: Any) -> dict[str, Any]:
        request = self.context["request"]
        url = product_url(product, request)
        thumbnail = thumbnail_url(product, request)
        return super().to_representation(
            {
                "id": product.pk,
                "name": product_name(product, request),
                "url": request.build_absolute_uri(url) if url else None,
                "thumbnail": request.build_absolute_uri(thumbnail) if thumbnail else None,
                "price": product_price(product, request),
                "score": product.similarity,
            }
        )


class SearchResultsSerializer(serializers.Serializer):
    """Matching products, best first."""

    count = serializers.IntegerField(read_only=True, help_text="Number of results returned.")
    results = SearchResultSerializer(many=True, read_only=True, help_text="Best match first.")


class ErrorSerializer(serializers.Serializer):
    """What went wrong."""

    detail = serializers.CharField(read_only=True)
