"""API for Recommended for you: the shopper's recommendations, and recording what they view.

The shopper is the session (Django's session cookie), as for the template tag: an app that
keeps the cookie between calls gets recommendations from the products it recorded with
``POST products/{id}/views/``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from visualsearch.api.schema import ERROR_RESPONSES, NOT_FOUND, VALIDATION_ERROR
from visualsearch.api.serializers import (
    ProductIdField,
    SearchParamsSerializer,
    SearchResultSerializer,
)
from visualsearch.api.views import VisualSearchAPIView
from visualsearch.query.recommend import EXPLORE, SIMILAR, recommend_for_session, record_view
from visualsearch.web.display import attach_thumbnails
from visualsearch.web.guards import session_started


class RecommendationParamsSerializer(SearchParamsSerializer):
    """How many recommendations (``RECOMMEND_SIZE`` by default), and the product filters."""

    default_limit_setting = "RECOMMEND_SIZE"


class RecommendationSerializer(SearchResultSerializer):
    """A recommended product, and why it is there."""

    score = serializers.FloatField(
        read_only=True,
        allow_null=True,
        help_text=(
            "Cosine similarity to the shopper's preference (the mean of the products they "
            "viewed), 1 is identical; null for exploration picks."
        ),
    )
    reason = serializers.ChoiceField(
        choices=[SIMILAR, EXPLORE],
        read_only=True,
        help_text=(
            "`similar`: near what the shopper viewed; `explore`: something different, so "
            "that the shopper sees more of the catalog."
        ),
    )

    def to_representation(self, product: Any) -> dict[str, Any]:
        data = super().to_representation(product)
        data["reason"] = product.recommendation
        return data


class RecommendationsSerializer(serializers.Serializer):
    """The shopper's recommendations: similar products first, then exploration picks."""

    count = serializers.IntegerField(read_only=True, help_text="Number of results returned.")
    personalised = serializers.BooleanField(
        read_only=True,
        help_text="False while the shopper has viewed nothing: every pick is exploration.",
    )
    results = RecommendationSerializer(many=True, read_only=True)


class ViewedSerializer(serializers.Serializer):
    """The products the shopper viewed, as the session keeps them."""

    viewed = serializers.ListField(
        child=ProductIdField(),
        read_only=True,
        help_text=("Ids of the products viewed, most recent last (at most `RECOMMEND_HISTORY`)."),
    )


class RecommendationsView(VisualSearchAPIView):
    @extend_schema(
        operation_id="visualsearch_recommendations",
        summary="Recommended for you",
        description=(
            "Products near the ones this shopper (session) viewed, that they have not seen, "
            "plus a share of exploration picks (`RECOMMEND_EXPLORATION`); with no history, "
            "diverse picks from the whole catalog. The products returned are remembered in "
            "the session, and the next call returns others."
        ),
        parameters=[RecommendationParamsSerializer],
        responses={200: RecommendationsSerializer, 400: VALIDATION_ERROR, **ERROR_RESPONSES},
        tags=["visualsearch"],
    )
    def get(self, request: Request) -> Response:
        params = self.validated(RecommendationParamsSerializer, request.query_params)
        session = _session(request, required=False)
        products = recommend_for_session(
            session,
            params["limit"],
            remember=session_started(session),  # a client without cookies starts no session
            queryset=self.get_queryset(),
            **params["filters"],
        )
        products = attach_thumbnails(products)
        data = {
            "count": len(products),
            "personalised": any(p.recommendation == SIMILAR for p in products),
            "results": products,
        }
        return Response(RecommendationsSerializer(data, context={"request": request}).data)


class ProductViewsView(VisualSearchAPIView):
    @extend_schema(
        operation_id="visualsearch_record_view",
        summary="Record that the shopper viewed (or clicked) a product",
        description=(
            "Adds the product to this session's history, which `GET recommendations/` "
            "recommends from. Viewing a product again moves it to the end."
        ),
        request=None,
        responses={201: ViewedSerializer, 404: NOT_FOUND, **ERROR_RESPONSES},
        tags=["visualsearch"],
    )
    def post(self, request: Request, pk: str) -> Response:
        product = self.get_product(pk)
        viewed = record_view(_session(request, required=True), product)
        return Response(ViewedSerializer({"viewed": viewed}).data, status=status.HTTP_201_CREATED)


def _session(request: Request, *, required: bool) -> Any:
    session = getattr(request._request, "session", None)
    if session is None and required:
        raise ImproperlyConfigured(
            "Recording views needs django.contrib.sessions.middleware.SessionMiddleware."
        )
    return session
