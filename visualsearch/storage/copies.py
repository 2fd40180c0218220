"""Product fields copied onto the image rows, so that filtered searches read only their images.

A filtered similarity query (``category=shoes``) otherwise joins the product table and reads
each matching product's images one by one, scattered over the table; through a copy (and
better still with :func:`visualsearch.models.filter_scan_index`) it reads the image table
alone (measured in docs/performance.md, Filtered queries).
With ``IMAGE_FILTER_FIELDS = {"category": "category"}`` the image model carries its own
``category`` column, kept equal to its product's, and :mod:`visualsearch.query` answers
``category…`` filters from it, through that column's index (a foreign key has one).

The copies follow the product: an image takes its product's values when it is saved, and
saving a product rewrites its images' copies (one ``UPDATE``). Bulk writes bypass signals:
images from ``bulk_create`` get their copies from the periodic sweep (``sweep_pending``,
through the copy column's index), and after a ``QuerySet.update`` of products ``manage.py
visualsearch_reindex`` (or :func:`sync_copies`) puts every copy right, one statement per
field. Until then such rows are missing from filtered results.
"""

from __future__ import annotations

from functools import lru_cache, reduce
from operator import or_
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import connections, models, router
from django.db.models.constants import LOOKUP_SEP

from visualsearch.conf import visualsearch_settings
from visualsearch.storage.lookup import get_image_model, get_product_model

__all__ = ["copied_fields", "image_lookups", "sync_copies"]

KEY = 'VISUALSEARCH["IMAGE_FILTER_FIELDS"]'


def copied_fields() -> dict[str, tuple[models.Field, models.Field]]:
    """``{image field name: (image field, product field)}`` from ``IMAGE_FILTER_FIELDS``.

    Raises ``ImproperlyConfigured`` (check E005) unless every entry names a concrete field of
    the image model and a concrete field of the product model holding the same kind of value
    (both foreign keys to one model, or the same column type). Resolved once per setting.
    """
    setting = visualsearch_settings.IMAGE_FILTER_FIELDS
    if not setting:
        return {}
    if not isinstance(setting, dict) or not all(
        isinstance(name, str) for pair in setting.items() for name in pair
    ):
        raise ImproperlyConfigured(f"{KEY} must be a dict of {{image field: product field}}.")
    return _resolve(
        tuple(setting.items()), visualsearch_settings.IMAGE_MODEL, get_product_model()._meta.label
    )


@lru_cache(maxsize=16)
def _resolve(pairs: tuple, image_label: str, product_label: str) -> dict:
    image_model, product_model = get_image_model(), get_product_model()
    fields = {}
    for image_name, product_name in pairs:
        image_field = _concrete(image_model, image_name)
        product_field = _concrete(product_model, product_name)
        if image_field.name == visualsearch_settings.PRODUCT_FIELD or image_field.primary_key:
            raise ImproperlyConfigured(f"{KEY}: {image_name!r} cannot hold a copy.")
        if image_field.is_relation != product_field.is_relation or (
            image_field.is_relation and image_field.related_model != product_field.related_model
        ):
            raise ImproperlyConfigured(
                f"{KEY}: {image_name!r} and {product_name!r} must both be foreign keys to the "
                "same model, or both plain fields."
            )
        connection = connections[router.db_for_write(image_model)]
        if image_field.db_type(connection) != product_field.db_type(connection):
            raise ImproperlyConfigured(
                f"{KEY}: {image_name!r} ({image_field.get_internal_type()}) cannot hold "
                f"{product_name!r} ({product_field.get_internal_type()})."
            )
        fields[image_field.name] = (image_field, product_field)
    return fields


def _concrete(model: type, name: Any) -> models.Field:
    try:
        field = model._meta.get_field(name)
    except (FieldDoesNotExist, TypeError):
        raise ImproperlyConfigured(
            f"{KEY}: {name!r} is not a field of {model._meta.label}."
        ) from None
    if not field.concrete or field.many_to_many:
        raise ImproperlyConfigured(f"{KEY}: {name!r} of {model._meta.label} is not a column.")
    return field


def image_lookups(filters: dict[str, Any]) -> dict[str, Any]:
    """``filters`` on the product as lookups on the image vector rows.

    A lookup whose first part names a copied product field (``category``, ``category_id``,
    ``category__slug``, ``category__in``…) reads the image row's copy; the rest go through
    the product (``product__price__lte``).
    """
    copies = {}
    for image_field, source in copied_fields().values():
        copies[source.name] = image_field.name
        copies[source.attname] = image_field.attname
    from visualsearch.storage.layout import image_storage

    storage = image_storage()
    lookups = {}
    for lookup, value in filters.items():
        first, _, rest = lookup.partition(LOOKUP_SEP)
        if first in copies:
            lookups[LOOKUP_SEP.join(filter(None, [copies[first], rest]))] = value
        else:
            lookups[f"{storage.product}{LOOKUP_SEP}{lookup}"] = value
    return lookups


def copy_from_product(sender: type, instance: Any, raw: bool, **kwargs: Any) -> None:
    """``pre_save`` of images: the copies take the product's current values (from the product
    the image holds, else one query for the copied columns)."""
    fields = copied_fields()
    if raw or not fields:
        return
    link = sender._meta.get_field(visualsearch_settings.PRODUCT_FIELD)
    product_pk = getattr(instance, link.attname)
    if product_pk is None:
        return
    sources = [source.attname for _field, source in fields.values()]
    product = link.get_cached_value(instance, None)
    if product is not None and product.pk == product_pk:
        row = {name: getattr(product, name) for name in sources}
    else:
        row = get_product_model()._base_manager.filter(pk=product_pk).values(*sources).first()
        if row is None:
            return  # the foreign key check will say so
    for field, source in fields.values():
        setattr(instance, field.attname, row[source.attname])


def copy_to_images(
    sender: type, instance: Any, raw: bool, update_fields: Any, **kwargs: Any
) -> None:
    """``post_save`` of products: the product's images whose copies differ take its new values
    (one ``UPDATE``; rows already equal are not rewritten)."""
    fields = copied_fields()
    if raw or not fields:
        return
    if update_fields is not None:
        changed = set(update_fields)
        fields = {
            name: (field, source)
            for name, (field, source) in fields.items()
            if {source.name, source.attname} & changed
        }
        if not fields:
            return
    values = {field.attname: getattr(instance, source.attname) for field, source in fields.values()}
    # ~Q(column=value) also matches NULL copies (Django negates with IS NOT NULL).
    differs = reduce(or_, (~models.Q(**{name: value}) for name, value in values.items()))
    images = get_image_model()._base_manager.filter(
        **{visualsearch_settings.PRODUCT_FIELD: instance.pk}
    )
    images.filter(differs).update(**values)


def sync_copies(using: str | None = None, *, missing_only: bool = False) -> int:
    """Give every image its product's values (after bulk writes); returns the rows changed.

    One ``UPDATE … FROM`` per copied field, touching only rows whose copy differs.
    ``missing_only`` looks only at rows whose copy is NULL (rows ``bulk_create`` wrote): the
    column's index finds them without reading the whole table (the periodic sweep does this).
    """
    fields = copied_fields()
    if not fields:
        return 0
    image_model, product_model = get_image_model(), get_product_model()
    using = using or router.db_for_write(image_model)
    connection = connections[using]
    quote = connection.ops.quote_name
    link = image_model._meta.get_field(visualsearch_settings.PRODUCT_FIELD).column
    changed = 0
    with connection.cursor() as cursor:
        for field, source in fields.values():
            copy, value = f"i.{quote(field.column)}", f"p.{quote(source.column)}"
            only = f" AND {copy} IS NULL AND {value} IS NOT NULL" if missing_only else ""
            cursor.execute(
                f"UPDATE {quote(image_model._meta.db_table)} AS i SET {quote(field.column)} ="
                f" {value} FROM {quote(product_model._meta.db_table)} AS p"
                f" WHERE p.{quote(product_model._meta.pk.column)} = i.{quote(link)}"
                f" AND {copy} IS DISTINCT FROM {value}{only}"
            )
            changed += cursor.rowcount
    return changed
