"""Demo shop: the Django project package and the catalog app that uses visualsearch."""

from .celery import app as celery_app

__all__ = ["celery_app"]
