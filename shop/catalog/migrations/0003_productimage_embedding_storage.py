from django.db import migrations

from visualsearch.storage.operations import EmbeddingStorage


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0002_product_text"),
    ]

    operations = [
        # Keep the image vectors in the rows: 512-d and larger vectors would go to TOAST.
        EmbeddingStorage("productimage"),
    ]
