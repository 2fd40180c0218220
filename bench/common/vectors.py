"""The text write path: how vectors were stored before the pipeline sent them in binary."""

from __future__ import annotations

from typing import Any


def orm_text_write(
    model: type, pk: Any, name: str, vector: Any, digest: str, model_id: str
) -> bool:
    """An ORM ``UPDATE`` of one image row, the vector bound as text; True when a row changed.

    What ``visualsearch.ingest.pipeline._write`` did before it sent the vector as a binary
    parameter: Django binds parameters on the client, so pgvector's field formats the floats
    into a string that Postgres parses back. Same arguments, conditions and columns as
    ``_write``, so the two can be timed against each other.
    """
    from django.utils import timezone

    from visualsearch.conf import visualsearch_settings
    from visualsearch.models import EmbeddingStatus

    now = timezone.now()
    rows = model._base_manager.filter(pk=pk, **{visualsearch_settings.IMAGE_FIELD: name})
    changed = rows.update(
        embedding=vector,
        embedding_model=model_id,
        embedding_hash=digest,
        embedding_status=EmbeddingStatus.READY,
        embedding_error="",
        embedded_at=now,
        embedding_updated_at=now,
    )
    return changed > 0
