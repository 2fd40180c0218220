"""Encoder generations: which encoder serves, which is being built.

A generation is recorded with the class and frozen options of its encoder
(:class:`~visualsearch.models.EncoderGeneration`), so any process can rebuild it while it
serves. A building generation's vectors are made by
:class:`visualsearch.ingest.pipeline.GenerationStrategy`; :mod:`visualsearch.ingest.switch`
starts builds and cuts over.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from visualsearch.conf import visualsearch_settings
from visualsearch.models import EncoderGeneration, GenerationState

logger = logging.getLogger(__name__)

#: Build failures remembered per generation (digest → reason); more are counted, not named.
MAX_FAILURES = 1000


def building() -> EncoderGeneration | None:
    """The generation being built, if any."""
    return EncoderGeneration.objects.filter(state=GenerationState.BUILDING).first()


def record(encoder: Any, state: str) -> EncoderGeneration:
    """Record ``encoder`` (the configured one) as a generation in ``state``, with options that
    rebuild it later (an adapted encoder's projection copied under its content hash)."""
    options = encoder.frozen_options(dict(visualsearch_settings.ENCODER_OPTIONS))
    now = timezone.now()
    generation, _ = EncoderGeneration.objects.update_or_create(
        model_id=encoder.model_id,
        defaults={
            "encoder": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
            "options": json.loads(json.dumps(options, default=str)),
            "dimensions": encoder.dimensions,
            "state": state,
            "serving_since": now if state == GenerationState.SERVING else None,
            "retired_at": None,
            "note": "",
            # A generation recorded again (a rollback to an earlier projection) starts afresh:
            # the cut-over's grace and the ETA count from now, old failures are forgotten.
            "created_at": now,
            "failures": {},
        },
    )
    return generation


def ensure_recorded(encoder: Any) -> None:
    """Record ``encoder`` as serving when no generation is recorded yet, so that a later
    change of encoder can keep serving it (a race with another process is harmless)."""
    if EncoderGeneration.objects.filter(state=GenerationState.SERVING).exists():
        return
    try:
        with transaction.atomic():
            record(encoder, GenerationState.SERVING)
    except IntegrityError:  # another process recorded one meanwhile
        pass


def note_failure(generation_pk: int, digest: str, reason: str) -> None:
    """Remember that the generation cannot embed this content (it does not hold up a
    cut-over; the row is embedded anew, and fails with its reason, after it)."""
    with transaction.atomic():
        generation = EncoderGeneration.objects.select_for_update().get(pk=generation_pk)
        failures = generation.failures
        if len(failures) < MAX_FAILURES:
            failures[digest] = reason[:500]
            generation.save(update_fields=["failures"])
