"""The Oscar example project; loads its Celery app with Django, as Celery's docs do."""

from oscar_example.celery import app as celery_app

__all__ = ["celery_app"]
