"""``manage.py visualsearch_bridge``: learn a text → image bridge from the catalog's pairs.

Reads every product's text vector (``TEXT_MODEL``) and the mean of its ready image vectors
(active image encoder) from the database, trains the bridge (``visualsearch.bridge``) on the
products outside a deterministic held-out share, reports on the held-out products how often a
product's bridged text vector finds its own photo among all the catalog's photos
(recall@10), and precision@10 by a product label if one is given, and writes the file
atomically. Running processes pick up a replaced file on their next text search.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from django.core.exceptions import FieldError, ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import get_encoder, get_text_encoder
from visualsearch.learning.adapt import epoch_progress, is_held_out
from visualsearch.learning.bridge import catalog_pairs, retrieval_at_k, train_bridge
from visualsearch.storage.lookup import get_product_model

K = 10


class Command(BaseCommand):
    help = "Train a bridge from text vectors to image vectors on the catalog's own pairs."
    # A missing or outdated bridge file fails check E005: this command is what repairs it.
    requires_system_checks: list = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", type=Path, help="bridge file (default: TEXT_BRIDGE)")
        parser.add_argument("--holdout", type=float, default=0.2, help="share of products kept out")
        parser.add_argument("--seed", type=int, default=0, help="split and training seed")
        parser.add_argument("--split-key", default="pk", help="product field the split hashes")
        parser.add_argument("--label", help="product field for precision@10 (e.g. category)")
        parser.add_argument("--hidden", type=int, default=1024)
        parser.add_argument("--epochs", type=int, default=30)
        parser.add_argument("--batch-size", type=int, default=256)
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        out = self._validate(options)
        try:
            pks, texts, images = catalog_pairs()
            text_id, image_id = get_text_encoder().model_id, get_encoder().model_id
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        if len(pks) < 2:
            raise CommandError(
                f"{len(pks)} product(s) have both a ready text vector ({text_id}) and a ready "
                f"image vector ({image_id}): embed the catalog first (visualsearch_reindex)."
            )
        keys = self._product_values(pks, options["split_key"])
        held = np.array([is_held_out(key, options["holdout"], options["seed"]) for key in keys])
        train, test = np.flatnonzero(~held), np.flatnonzero(held)
        if len(train) < 2:
            raise CommandError(f"Only {len(train)} product(s) left to train on: lower --holdout.")
        self.stdout.write(
            f"{len(pks)} products with a text vector ({text_id}) and image vectors ({image_id}); "
            f"training on {len(train)}, {len(test)} held out "
            f"(--holdout {options['holdout']} --seed {options['seed']} "
            f"--split-key {options['split_key']})."
        )
        started = time.monotonic()
        progress = epoch_progress(
            options["epochs"], disable=options["no_progress"], file=self.stderr
        )
        with progress as on_epoch:
            bridge = train_bridge(
                texts[train], images[train], hidden=options["hidden"], epochs=options["epochs"],
                batch_size=options["batch_size"], seed=options["seed"], on_epoch=on_epoch,
            )  # fmt: skip
        metrics: dict[str, Any] = {"trained_seconds": round(time.monotonic() - started, 1)}
        labels = self._product_values(pks, options["label"]) if options["label"] else None
        bridged = bridge.apply(texts)
        for name, rows in (("training", train), ("heldout", test)):
            if len(rows):
                for metric, value in retrieval_at_k(bridged[rows], images, rows, labels, K).items():
                    metrics[f"{name}_{metric}"] = round(value, 4)
        self._report(metrics, len(pks), len(test), options["label"])
        bridge.meta.update(
            text_model=text_id, image_model=image_id, products=len(pks),
            holdout=options["holdout"], split_seed=options["seed"],
            split_key=options["split_key"], label=options["label"], **metrics,
        )  # fmt: skip
        bridge.save(out)
        self.stdout.write(self.style.SUCCESS(f"Wrote {out} ({metrics['trained_seconds']} s)."))
        if visualsearch_settings.TEXT_BRIDGE is None:
            self.stdout.write(f"Turn it on with VISUALSEARCH['TEXT_BRIDGE'] = '{out}'.")

    def _validate(self, options: dict) -> Path:
        """The output path, once every numeric option is in range."""
        if not 0 <= options["holdout"] < 1:
            raise CommandError("--holdout must be in [0, 1).")
        for name, minimum in (("epochs", 1), ("hidden", 1), ("batch_size", 2)):
            if options[name] < minimum:
                flag = "--" + name.replace("_", "-")
                raise CommandError(f"{flag} must be at least {minimum}, got {options[name]}.")
        out = options["out"] or visualsearch_settings.TEXT_BRIDGE
        if not out:
            raise CommandError("Give --out (VISUALSEARCH['TEXT_BRIDGE'] is not set).")
        out = Path(out)
        if out.is_dir():
            raise CommandError(f"--out {out} is a directory; give a file path (bridge.npz).")
        return out

    def _product_values(self, pks: list, field: str) -> list:
        """The value of the product field ``field`` for each of ``pks``, in their order."""
        products = get_product_model()._base_manager.filter(pk__in=pks)
        try:
            values = dict(products.values_list("pk", field))
        except FieldError as exc:
            raise CommandError(f"{field!r} is not a product field: {exc}") from exc
        return [values[pk] for pk in pks]

    def _report(self, metrics: dict, products: int, held_out: int, label: str | None) -> None:
        chance = min(K / products, 1.0)
        for name, title in (("training", "Training products"), ("heldout", "Held-out products")):
            if f"{name}_recall@{K}" not in metrics:
                continue
            line = (
                f"{title}: own photo among the {K} nearest of all {products} products' photos "
                f"(recall@{K}) {metrics[f'{name}_recall@{K}']:.3f} (chance {chance:.3f})"
            )
            if label:
                line += f"; precision@{K} by {label} {metrics[f'{name}_precision@{K}']:.3f}"
            self.stdout.write(line + ".")
        if not held_out:
            self.stdout.write("No product held out (--holdout 0): no held-out numbers.")
