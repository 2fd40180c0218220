"""Filters from query parameters: ``?category=shirts&max_price=40`` to ORM keyword arguments.

``VISUALSEARCH["FILTERS"]`` maps a query parameter to a product lookup, for example
``{"category": "category__slug", "in_stock": "in_stock", "max_price": "price__lte"}``. Each
value is converted by the ``to_python`` of the model field at the end of the lookup path
(following relations), so a bad value is refused here, with the parameter's name, rather
than by the database. The result is the ``**filters`` that :mod:`visualsearch.query` takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, ValidationError
from django.db import models
from django.db.models.constants import LOOKUP_SEP

from visualsearch.conf import visualsearch_settings
from visualsearch.storage.lookup import get_product_model

__all__ = ["Filter", "InvalidFilter", "filter_kwargs", "get_filters"]

TRUE_WORDS = {"true", "t", "yes", "y", "on", "1"}
FALSE_WORDS = {"false", "f", "no", "n", "off", "0"}
#: Lookups whose value is a comma-separated list (``?colour=red,blue``).
LIST_LOOKUPS = {"in": None, "range": 2}


class InvalidFilter(ValueError):
    """A filter parameter's value cannot be used; ``param`` names it, ``message`` says why."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"Invalid value for {param!r}: {message}")
        self.param = param
        self.message = message


@dataclass(frozen=True)
class Filter:
    """One accepted query parameter: its product ``lookup`` and the model ``field`` it ends on.

    ``lookup_name`` is the trailing lookup (``"lte"``, ``"in"``…) or ``"exact"``.
    """

    param: str
    lookup: str
    field: models.Field
    lookup_name: str = "exact"

    def convert(self, value: Any) -> Any:
        """``value`` (usually a string) as the lookup expects it; ``InvalidFilter`` if it can't."""
        if self.lookup_name == "isnull":
            return self._convert_one(value, models.BooleanField())
        if self.lookup_name in LIST_LOOKUPS:
            items = [item.strip() for item in str(value).split(",")]
            size = LIST_LOOKUPS[self.lookup_name]
            if size is not None and len(items) != size:
                raise InvalidFilter(self.param, f"give {size} comma-separated values.")
            return [self._convert_one(item, self.field) for item in items]
        return self._convert_one(value, self.field)

    def _convert_one(self, value: Any, field: models.Field) -> Any:
        if isinstance(value, str):
            if "\x00" in value:
                raise InvalidFilter(self.param, "the value contains a NUL character.")
            if isinstance(field, models.BooleanField):
                word = value.strip().lower()
                value = True if word in TRUE_WORDS else False if word in FALSE_WORDS else value
        try:
            return field.to_python(value)
        except ValidationError as exc:
            raise InvalidFilter(self.param, " ".join(exc.messages)) from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise InvalidFilter(self.param, str(exc) or "not a valid value.") from None


def get_filters() -> list[Filter]:
    """The filters configured in ``VISUALSEARCH["FILTERS"]``, resolved against the product model.

    Raises ``ImproperlyConfigured`` naming the parameter whose lookup does not fit the model.
    """
    configured = visualsearch_settings.FILTERS
    if not isinstance(configured, Mapping):
        raise ImproperlyConfigured(
            'VISUALSEARCH["FILTERS"] must be a dict of {query parameter: product lookup}.'
        )
    model = get_product_model()
    return [_resolve(model, param, lookup) for param, lookup in configured.items()]


def filter_kwargs(params: Mapping[str, Any], filters: list[Filter] | None = None) -> dict:
    """Keyword arguments for :mod:`visualsearch.query` from request parameters ``params``.

    Parameters that are not filters are ignored, and so are empty values (an "any" choice in
    a form). A value that does not convert raises ``InvalidFilter`` naming its parameter.
    """
    kwargs = {}
    for item in get_filters() if filters is None else filters:
        value = params.get(item.param)
        if value is None or value == "":
            continue
        kwargs[item.lookup] = item.convert(value)
    return kwargs


def _resolve(model: type[models.Model], param: str, lookup: str) -> Filter:
    """Walk ``lookup`` (``"category__slug"``, ``"price__lte"``) from ``model`` to its field."""
    if not isinstance(lookup, str) or not lookup:
        raise ImproperlyConfigured(
            f'VISUALSEARCH["FILTERS"][{param!r}] must be a lookup string such as "price__lte".'
        )
    parts = lookup.split(LOOKUP_SEP)
    field: models.Field | None = None
    current: type[models.Model] | None = model
    for index, part in enumerate(parts):
        found = _get_field(current, part) if current is not None else None
        if found is None:
            # Only the last part may be a lookup (lte, in, isnull…) on the field before it.
            if index == len(parts) - 1 and field is not None and field.get_lookup(part):
                return Filter(param, lookup, field, part)
            break
        field = found
        current = field.related_model if field.is_relation else None
        if field.is_relation and not field.concrete:  # a reverse relation: match on its pk
            field = current._meta.pk
    else:
        return Filter(param, lookup, field)
    raise ImproperlyConfigured(
        f'VISUALSEARCH["FILTERS"][{param!r}] = {lookup!r} is not a lookup on '
        f"{model._meta.label}: give a field path (following relations with __) and at most "
        "one lookup such as lte, in or isnull."
    )


def _get_field(model: type[models.Model], name: str) -> models.Field | None:
    try:
        return model._meta.get_field(name)
    except FieldDoesNotExist:
        return None
