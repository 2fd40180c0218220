"""Celery application of the example (``celery -A oscar_example worker``), as Celery's Django
guide writes it: the visualsearch tasks are found by ``autodiscover_tasks()``."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oscar_example.settings")

app = Celery("oscar_example")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
