from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("catalog", "0004_productimage_category")]

    operations = [
        # visualsearch's enqueue bookkeeping (EmbeddingRecord): when a task was last sent for
        # the row, and how many tasks started for its content.
        migrations.AddField(
            model_name="productimage",
            name="embedding_attempts",
            field=models.PositiveIntegerField(
                default=0, editable=False, verbose_name="embedding attempts"
            ),
        ),
        migrations.AddField(
            model_name="productimage",
            name="embedding_queued_at",
            field=models.DateTimeField(
                blank=True, editable=False, null=True, verbose_name="embedding queued at"
            ),
        ),
        migrations.AddField(
            model_name="producttext",
            name="embedding_attempts",
            field=models.PositiveIntegerField(
                default=0, editable=False, verbose_name="embedding attempts"
            ),
        ),
        migrations.AddField(
            model_name="producttext",
            name="embedding_queued_at",
            field=models.DateTimeField(
                blank=True, editable=False, null=True, verbose_name="embedding queued at"
            ),
        ),
    ]
