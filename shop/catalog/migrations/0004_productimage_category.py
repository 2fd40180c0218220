import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0003_productimage_embedding_storage"),
    ]

    operations = [
        # The product's category on the image rows (VISUALSEARCH["IMAGE_FILTER_FIELDS"]), so
        # that category filters read the image table alone, through this column's index.
        migrations.AddField(
            model_name="productimage",
            name="category",
            field=models.ForeignKey(
                blank=True,
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="catalog.category",
            ),
        ),
        # Existing rows take their product's category (visualsearch keeps it in step after).
        migrations.RunSQL(
            "UPDATE catalog_productimage AS i SET category_id = p.category_id"
            " FROM catalog_product AS p WHERE p.id = i.product_id",
            migrations.RunSQL.noop,
        ),
    ]
