"""``manage.py visualsearch_adapt``: learn a catalog-specific projection from product labels.

Trains on the base encoder's features of every image whose product is not held out, reports
precision@10 by label on the held-out products before and after, and writes the projection.
Base features are encoded once and kept (:mod:`visualsearch.ingest.features`): a retrain
reads them back instead of encoding the catalog again. When the configured encoder is the
``AdaptedEncoder`` reading that file, the new projection is a new encoder generation: it is
applied to the stored features and takes over from the previous one without a gap in
results (:mod:`visualsearch.ingest.switch`); images without stored features are embedded by
the workers (``--reindex enqueue``, the default) or right here (``--reindex inline``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import get_encoder
from visualsearch.encoders.adapted import AdaptedEncoder
from visualsearch.ingest import features as stored_features
from visualsearch.ingest import switch
from visualsearch.ingest.images import InvalidImage, decode_stored, read_stored
from visualsearch.ingest.loop import content_hash
from visualsearch.ingest.tasks import cut_over, enqueue, enqueue_build
from visualsearch.learning.adapt import (
    epoch_progress,
    is_held_out,
    precision_at_k,
    train_projection,
)
from visualsearch.models import EmbeddingStatus
from visualsearch.storage.layout import ImageStorage, image_storage


class Command(BaseCommand):
    help = "Train a projection that groups images by a product label, and activate it."
    # The adapted encoder may not have its projection yet: that is what this command makes.
    requires_system_checks: list = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--label", default="category", help="product field to learn from")
        parser.add_argument("--out", type=Path, help="projection file (default: the configured)")
        parser.add_argument("--holdout", type=float, default=0.2, help="share of products kept out")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--split-key", default="pk", help="product field the split hashes")
        parser.add_argument("--hidden", type=int, default=1024)
        parser.add_argument("--epochs", type=int, default=30)
        parser.add_argument(
            "--reindex", choices=["enqueue", "inline", "none"], default="enqueue",
            help="how to re-embed once the configured projection changed",
        )  # fmt: skip
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 <= options["holdout"] < 1:
            raise CommandError("--holdout must be in [0, 1).")
        active = get_encoder()
        base = active.base if isinstance(active, AdaptedEncoder) else active
        out = options["out"] or (
            active.projection_path if isinstance(active, AdaptedEncoder) else None
        )
        if out is None:
            raise CommandError("Give --out (the configured encoder is not an AdaptedEncoder).")

        features, labels, products, held = self._features(base, options)
        train = np.flatnonzero(~held)
        test = np.flatnonzero(held)
        self.stdout.write(
            f"{len(features)} images of {len(set(products))} products, {len(set(labels))} labels; "
            f"training on {len(train)} images, {len(test)} held out."
        )
        started = time.monotonic()
        progress = epoch_progress(
            options["epochs"], disable=options["no_progress"], file=self.stderr
        )
        with progress as on_epoch:
            projection = train_projection(
                features[train], [labels[i] for i in train], hidden=options["hidden"],
                epochs=options["epochs"], seed=options["seed"], on_epoch=on_epoch,
            )  # fmt: skip
        metrics = {"trained_seconds": round(time.monotonic() - started, 1)}
        if len(test):
            metrics["heldout_precision@10_before"] = precision_at_k(
                features, labels, test, 10, products
            )
            adapted = projection.apply(features)
            metrics["heldout_precision@10_after"] = precision_at_k(
                adapted, labels, test, 10, products
            )
            self.stdout.write(
                f"Held-out precision@10 by {options['label']} (exact, per image): "
                f"{metrics['heldout_precision@10_before']:.3f} before, "
                f"{metrics['heldout_precision@10_after']:.3f} after."
            )
        projection.meta.update(
            base_model=base.model_id, label=options["label"], holdout=options["holdout"],
            split_seed=options["seed"], split_key=options["split_key"], **metrics,
        )  # fmt: skip
        switch.sync()  # the serving projection is recorded before the file is replaced
        projection.save(out)
        self.stdout.write(self.style.SUCCESS(f"Wrote {out} ({metrics['trained_seconds']} s)."))
        self._activate(active, out, options)

    def _features(self, base: Any, options: dict) -> tuple:
        """Base features, labels, product ids and held-out flags of every labelled image."""
        storage = image_storage()
        model, product = storage.model, storage.product
        label, key = f"{product}__{options['label']}", f"{product}__{options['split_key']}"
        rows = list(
            model._base_manager.exclude(**{f"{label}__isnull": True})
            .order_by("pk")
            .values_list("pk", product, key, label, "embedding_hash")
        )
        if not rows:
            raise CommandError(f"No image has a product with a {options['label']!r} value.")
        stored = self._stored(model, base, rows)
        missing = [row[0] for row in rows if row[0] not in stored]
        if missing:  # e.g. retraining while adapted vectors are active: encode with the base
            self.stdout.write(f"Encoding {len(missing)} image(s) with {base.model_id}.")
            stored.update(self._encode(storage, base, missing, options))
        rows = [row for row in rows if row[0] in stored]
        features = np.stack([np.asarray(stored[row[0]], dtype=np.float32) for row in rows])
        held = np.array([is_held_out(row[2], options["holdout"], options["seed"]) for row in rows])
        return features, [str(row[3]) for row in rows], [row[1] for row in rows], held

    def _stored(self, model: type, base: Any, rows: list) -> dict:
        """``{pk: base features}`` already at hand: serving vectors of the base model (kept as
        features too) and features kept by earlier runs and by the pipeline."""
        served = model._base_manager.filter(
            embedding_model=base.model_id, embedding_status=EmbeddingStatus.READY
        ).values_list("pk", "embedding_hash", "embedding")
        stored, by_hash = {}, {}
        for pk, digest, vector in served:
            stored[pk] = by_hash[digest] = np.asarray(vector, dtype=np.float32)
        if by_hash:
            stored_features.store(base.model_id, list(by_hash), list(by_hash.values()))
        kept = stored_features.lookup(base.model_id, {row[4] for row in rows if row[4]})
        for row in rows:
            if row[0] not in stored and row[4] in kept:
                stored[row[0]] = kept[row[4]]
        return stored

    def _encode(self, storage: ImageStorage, base: Any, pks: list, options: dict) -> dict:
        vectors = {}
        field = visualsearch_settings.IMAGE_FIELD
        bar = tqdm(total=len(pks), unit="img", disable=options["no_progress"], file=self.stderr)
        for start in range(0, len(pks), visualsearch_settings.BATCH_SIZE):
            batch, images, digests = [], [], []
            for row in storage.with_images(
                storage.rows.filter(pk__in=pks[start : start + visualsearch_settings.BATCH_SIZE])
            ):
                try:
                    data = read_stored(getattr(storage.image_of(row), field))
                    images.append(decode_stored(data))
                    batch.append(row.pk)
                    digests.append(content_hash(data))
                except (OSError, ValueError, InvalidImage):
                    continue  # unreadable images simply do not take part in training
            if images:
                encoded = base.encode_images(images)
                stored_features.store(base.model_id, digests, encoded)  # kept for next time
                vectors.update(zip(batch, encoded, strict=True))
            bar.update(min(visualsearch_settings.BATCH_SIZE, len(pks) - start))
        bar.close()
        return vectors

    def _activate(self, active: Any, out: Path, options: dict) -> None:
        configured = (
            isinstance(active, AdaptedEncoder) and active.projection_path.resolve() == out.resolve()
        )
        if not configured:
            self.stdout.write(
                "Activate it with VISUALSEARCH['ENCODER'] = "
                "'visualsearch.encoders.adapted.AdaptedEncoder' and ENCODER_OPTIONS = "
                f"{{'base': '{type(active).__module__}.{type(active).__name__}', "
                f"'projection': '{out}'}}; stored vectors then become stale and are re-embedded."
            )
            return
        started = switch.sync()
        if started is None:
            self.stdout.write(f"{active.model_id} serves (nothing to switch from).")
            return
        state = switch.progress()
        self.stdout.write(
            f"New model {started.model_id}: {state.covered} of {state.total} image(s) derived "
            f"from stored features; {state.serving} serves until it takes over."
        )
        if options["reindex"] == "enqueue":
            enqueue_build(started)
        if options["reindex"] == "inline":
            pending = switch.run_inline()
            done = pending is not None
            enqueue(image_storage().model, pending or [])
        else:
            done = cut_over()
        if done:
            self.stdout.write(f"{started.model_id} serves now.")
        elif options["reindex"] == "enqueue":
            self.stdout.write("The workers embed the rest; it takes over when done.")
