"""App configuration: registers system checks, Celery tasks and the image model's signal
handlers."""

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured


class VisualSearchConfig(AppConfig):
    name = "visualsearch"
    verbose_name = "Visual search"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_init, post_save, pre_save

        from visualsearch import checks  # noqa: F401  (registers the checks)
        from visualsearch.ingest import switch, tasks  # noqa: F401  (registers the Celery tasks)
        from visualsearch.ingest.handlers import (
            image_deleted,
            image_saved,
            invalidate_renderings,
            product_saved,
            remember_file,
        )
        from visualsearch.storage.copies import copy_from_product, copy_to_images
        from visualsearch.storage.lookup import get_image_model, get_product_model

        _register_opclass_wrapper()
        try:
            model = get_image_model()
            product_model = get_product_model()
        except ImproperlyConfigured:
            return  # reported by system check visualsearch.E005
        post_init.connect(remember_file, sender=model, dispatch_uid="visualsearch.remember_file")
        post_save.connect(image_saved, sender=model, dispatch_uid="visualsearch.image_saved")
        post_delete.connect(image_deleted, sender=model, dispatch_uid="visualsearch.image_deleted")
        # Text search (VISUALSEARCH["TEXT_MODEL"]): the handler returns at once while it is off.
        post_save.connect(
            product_saved, sender=product_model, dispatch_uid="visualsearch.product_saved"
        )
        # Product fields copied onto the image rows (IMAGE_FILTER_FIELDS; no-ops while unset).
        pre_save.connect(copy_from_product, sender=model, dispatch_uid="visualsearch.copy_from")
        post_save.connect(
            copy_to_images, sender=product_model, dispatch_uid="visualsearch.copy_to_images"
        )
        # Cached widgets show images, names and prices: any change to either model drops them.
        for sender in (model, product_model):
            for signal, name in ((post_save, "save"), (post_delete, "delete")):
                signal.connect(
                    invalidate_renderings,
                    sender=sender,
                    dispatch_uid=f"visualsearch.invalidate.{name}.{sender._meta.label}",
                )


def _register_opclass_wrapper() -> None:
    """Let ``OpClass`` wrap an index expression, as ``django.contrib.postgres`` does when it is
    installed: without it Django puts the operator class inside the expression's parentheses,
    ``((embedding)::halfvec(n) halfvec_cosine_ops)``, which Postgres rejects (HNSW_HALFVEC)."""
    from django.contrib.postgres.indexes import OpClass
    from django.db.models.indexes import IndexExpression

    if OpClass not in IndexExpression.wrapper_classes:
        IndexExpression.register_wrappers(*IndexExpression.wrapper_classes, OpClass)
