"""Installs the pgvector extension; host migrations that add EmbeddedImage depend on this."""

from django.db import migrations
from pgvector.django import VectorExtension


class Migration(migrations.Migration):
    initial = True
    dependencies: list = []
    operations = [VectorExtension()]
