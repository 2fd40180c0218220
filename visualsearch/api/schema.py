"""OpenAPI for drf-spectacular: filter parameters typed from the product model, error bodies.

Importing this module registers the extensions (the views import it).
"""

from __future__ import annotations

from typing import Any

from django.db import models
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import OpenApiResponse

from visualsearch.api.serializers import NO_NUL, ErrorSerializer
from visualsearch.query.filters import LIST_LOOKUPS, Filter
from visualsearch.storage.lookup import get_product_model


class FilterFieldExtension(OpenApiSerializerFieldExtension):
    target_class = "visualsearch.api.serializers.FilterField"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        return filter_schema(auto_schema, self.target.filter)


class ProductIdFieldExtension(OpenApiSerializerFieldExtension):
    target_class = "visualsearch.api.serializers.ProductIdField"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema = _value_schema(auto_schema, get_product_model()._meta.pk)
        schema.pop("pattern", None)
        return {**schema, "readOnly": True}


def filter_schema(auto_schema: Any, item: Filter) -> dict[str, Any]:
    """What a filter parameter accepts: what its field's ``to_python`` converts."""
    if item.lookup_name == "isnull":
        return {"type": "boolean"}
    if item.lookup_name in LIST_LOOKUPS:
        return {"type": "string"}
    return _value_schema(auto_schema, item.field)


def _value_schema(auto_schema: Any, field: models.Field) -> dict[str, Any]:
    while field.is_relation and field.target_field is not field:
        field = field.target_field
    if isinstance(field, models.BooleanField):
        return {"type": "boolean"}
    if isinstance(field, models.IntegerField):  # AutoField and the other integer fields
        return {"type": "integer"}
    if isinstance(field, models.DecimalField | models.FloatField):
        return {"type": "number"}
    schema = auto_schema._map_model_field(field, direction="request")
    # Any string is a valid filter value (it may match nothing): keep the type and format only.
    kept = {"type": schema.get("type", "string")}
    if "format" in schema:
        kept["format"] = schema["format"]
    elif kept["type"] == "string":
        kept["pattern"] = NO_NUL
    return kept


#: DRF's validation errors: ``{"param": ["message", …]}``, or ``{"detail": "message"}``.
VALIDATION_ERROR = OpenApiResponse(
    response={
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "additionalProperties": {"type": "array", "items": {"type": "string"}},
    },
    description=(
        "Invalid input. Each key names a parameter (or `non_field_errors`) and lists what is "
        "wrong with it; `detail` holds a message about the request as a whole."
    ),
)
ERROR_RESPONSES = {
    401: OpenApiResponse(ErrorSerializer, description="Authentication failed."),
    403: OpenApiResponse(ErrorSerializer, description="Refused by `API_PERMISSION_CLASSES`."),
    429: OpenApiResponse(ErrorSerializer, description="Too many requests (`API_THROTTLE_RATE`)."),
}
#: A remote inference endpoint (``QUERY_ENCODER = "remote"``) that cannot encode the query.
ENCODER_UNAVAILABLE = OpenApiResponse(
    ErrorSerializer,
    description="The inference endpoint that encodes queries is down or misconfigured "
    "(`QUERY_ENCODER` remote); `Retry-After` says when to try again.",
)
NOT_FOUND = OpenApiResponse(ErrorSerializer, description="No such product.")
UNSUPPORTED_MEDIA_TYPE = OpenApiResponse(
    ErrorSerializer, description="The body is not `multipart/form-data`."
)
