#!/usr/bin/env python
"""Management commands of the Oscar example (``python manage.py migrate`` …)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oscar_example.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
