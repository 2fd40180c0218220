"""The host's models named in the settings: image, product and product-text models."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from visualsearch.conf import visualsearch_settings


def get_image_model() -> type:
    """The host's image model named by ``VISUALSEARCH["IMAGE_MODEL"]`` (``"app_label.Model"``):
    any installed model (``visualsearch.storage`` says where its vectors live)."""
    label = visualsearch_settings.IMAGE_MODEL
    if not label:
        raise ImproperlyConfigured(
            'Set VISUALSEARCH["IMAGE_MODEL"] to the "app_label.ModelName" of your image model.'
        )
    return _host_model("IMAGE_MODEL", label)


def _host_model(key: str, label: Any, base: type | None = None) -> type:
    """The installed model ``label`` that the setting ``key`` names, checked to include
    ``base`` when given."""
    from django.apps import apps

    try:
        model = apps.get_model(label, require_ready=False)
    except (ValueError, LookupError, AttributeError) as exc:
        raise ImproperlyConfigured(
            f'VISUALSEARCH["{key}"] = {label!r} is not an installed model ("app_label.Model"):'
            f" {exc}"
        ) from exc
    if base is not None and not issubclass(model, base):
        raise ImproperlyConfigured(
            f'VISUALSEARCH["{key}"] = {label!r} must inherit visualsearch.models.{base.__name__}.'
        )
    return model


def get_product_model() -> type:
    """The model that the image model's ``PRODUCT_FIELD`` foreign key points to."""
    image_model = get_image_model()
    name = visualsearch_settings.PRODUCT_FIELD
    try:
        field = image_model._meta.get_field(name)
    except Exception as exc:
        raise ImproperlyConfigured(
            f'VISUALSEARCH["PRODUCT_FIELD"] = {name!r} is not a field of {image_model.__name__}.'
        ) from exc
    if not field.many_to_one:
        raise ImproperlyConfigured(
            f'VISUALSEARCH["PRODUCT_FIELD"] = {name!r} must be a ForeignKey to the product model.'
        )
    return field.related_model


def get_text_model() -> type | None:
    """The host's product-text model named by ``VISUALSEARCH["TEXT_MODEL"]``; None when unset.

    It must include ``visualsearch.models.EmbeddedText`` and link to the product model with a
    one-to-one field named ``PRODUCT_FIELD``.
    """
    label = visualsearch_settings.TEXT_MODEL
    if not label:
        return None
    from visualsearch.models import EmbeddedText

    model = _host_model("TEXT_MODEL", label, EmbeddedText)
    name = visualsearch_settings.PRODUCT_FIELD
    try:
        field = model._meta.get_field(name)
    except Exception:
        field = None
    if field is None or not field.one_to_one or field.related_model is not get_product_model():
        raise ImproperlyConfigured(
            f'VISUALSEARCH["TEXT_MODEL"] = {label!r} needs a OneToOneField {name!r} '
            "(PRODUCT_FIELD) to the product model."
        )
    return model
