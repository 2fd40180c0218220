"""visualsearch's own vector table, linked to the host's ``VISUALSEARCH["IMAGE_MODEL"]``.

The link's target, the vector size and the HNSW options come from the settings when the
migration runs, as ``AUTH_USER_MODEL`` does for foreign keys to the user model: adopters run
``migrate`` and nothing else. The image model must exist in its app's first migration.
"""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

import visualsearch.models
from visualsearch.models import _image_model_label, image_hnsw_index
from visualsearch.storage.operations import EmbeddingStorage


def _image_app_dependency() -> list[tuple[str, str]]:
    app_label = _image_model_label().split(".")[0]
    return [] if app_label == "visualsearch" else [(app_label, "__first__")]


class Migration(migrations.Migration):
    dependencies = [("visualsearch", "0002_visualsearch_admin"), *_image_app_dependency()]

    operations = [
        migrations.CreateModel(
            name="ImageEmbedding",
            fields=[
                (
                    "embedding_model",
                    models.CharField(
                        blank=True,
                        default="",
                        editable=False,
                        max_length=200,
                        verbose_name="encoder model",
                    ),
                ),
                (
                    "embedding_status",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("ready", "Ready"),
                            ("failed", "Failed"),
                            ("stale", "Stale (older encoder)"),
                        ],
                        default="pending",
                        editable=False,
                        max_length=16,
                        verbose_name="embedding status",
                    ),
                ),
                (
                    "embedding_error",
                    models.TextField(
                        blank=True, default="", editable=False, verbose_name="embedding error"
                    ),
                ),
                (
                    "embedded_at",
                    models.DateTimeField(
                        blank=True, editable=False, null=True, verbose_name="embedded at"
                    ),
                ),
                (
                    "embedding_updated_at",
                    models.DateTimeField(
                        default=django.utils.timezone.now,
                        editable=False,
                        verbose_name="embedding status changed",
                    ),
                ),
                (
                    "image",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="visualsearch_embedding",
                        serialize=False,
                        to=_image_model_label(),
                        verbose_name="image",
                    ),
                ),
                ("embedding", visualsearch.models.EmbeddingField()),
                (
                    "embedding_hash",
                    models.CharField(
                        blank=True,
                        default="",
                        editable=False,
                        max_length=64,
                        verbose_name="content hash",
                    ),
                ),
                (
                    "embedded_file",
                    models.TextField(
                        blank=True, default="", editable=False, verbose_name="embedded file"
                    ),
                ),
            ],
            options={
                "verbose_name": "image embedding",
                "indexes": [
                    image_hnsw_index(name="visualsearch_image_hnsw"),
                    models.Index(
                        fields=["embedding_status", "embedding_model"],
                        name="visualsearch_image_st",
                    ),
                ],
            },
        ),
        # Vectors inside the rows, not in TOAST (visualsearch.storage.operations).
        EmbeddingStorage("imageembedding"),
    ]
