"""WSGI entry point of the Oscar example."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oscar_example.settings")

application = get_wsgi_application()
