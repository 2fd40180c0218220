"""Enqueue bookkeeping on visualsearch's vector rows: when a task was last sent for a row
(the sweep leaves recently queued rows to it) and how many tasks started for its content
(a task gives up at ``TASK_MAX_ATTEMPTS``). Both columns are added without a table rewrite."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("visualsearch", "0003_imageembedding")]

    operations = [
        migrations.AddField(
            model_name="imageembedding",
            name="embedding_attempts",
            field=models.PositiveIntegerField(
                default=0, editable=False, verbose_name="embedding attempts"
            ),
        ),
        migrations.AddField(
            model_name="imageembedding",
            name="embedding_queued_at",
            field=models.DateTimeField(
                blank=True, editable=False, null=True, verbose_name="embedding queued at"
            ),
        ),
    ]
