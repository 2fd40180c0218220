"""The admin's overview model (no table): a home for the status and search-by-image views."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("visualsearch", "0001_vector_extension"),
    ]

    operations = [
        migrations.CreateModel(
            name="VisualSearch",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
            ],
            options={
                "verbose_name": "Visual search overview",
                "verbose_name_plural": "Visual search overview",
                "managed": False,
                "default_permissions": ("view",),
            },
        ),
    ]
