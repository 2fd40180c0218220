"""Encoder generations (blue/green switch) and content-addressed vectors outside the serving
column: base features of adapted encoders, and a building generation's vectors."""

import django.utils.timezone
import pgvector.django.vector
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("visualsearch", "0004_embedding_attempts"),
    ]

    operations = [
        migrations.CreateModel(
            name="EncodedVector",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("model_id", models.CharField(max_length=200, verbose_name="encoder model")),
                ("digest", models.CharField(max_length=64, verbose_name="content hash")),
                ("vector", pgvector.django.vector.VectorField()),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "verbose_name": "encoded vector",
                "db_table": "visualsearch_encodedvector",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("model_id", "digest"), name="visualsearch_encodedvector_key"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="EncoderGeneration",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "model_id",
                    models.CharField(max_length=200, unique=True, verbose_name="encoder model"),
                ),
                ("encoder", models.CharField(max_length=300, verbose_name="encoder class")),
                (
                    "options",
                    models.JSONField(blank=True, default=dict, verbose_name="encoder options"),
                ),
                ("dimensions", models.PositiveIntegerField()),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("serving", "Serving queries"),
                            (
                                "building",
                                "Building (queries still served by the serving generation)",
                            ),
                            ("retired", "Retired"),
                        ],
                        max_length=16,
                    ),
                ),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("serving_since", models.DateTimeField(blank=True, null=True)),
                ("retired_at", models.DateTimeField(blank=True, null=True)),
                ("note", models.TextField(blank=True, default="")),
                ("failures", models.JSONField(blank=True, default=dict)),
            ],
            options={
                "verbose_name": "encoder generation",
                "db_table": "visualsearch_encodergeneration",
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("state__in", ["serving", "building"])),
                        fields=("state",),
                        name="visualsearch_one_generation_per_state",
                    )
                ],
            },
        ),
    ]
