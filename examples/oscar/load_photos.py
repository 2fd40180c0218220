#!/usr/bin/env python
"""Fill the example's Oscar catalogue with real product photos, through Oscar's own importers.

Writes the fashion-products data set (``products.csv`` and ``images/<id>.jpg``) as the CSV
``oscar_import_catalogue`` reads (product class, category, UPC, title, description, partner,
SKU, price, stock) and a folder of photos named by UPC for ``oscar_import_catalogue_images``,
then runs both. Every image is saved the way Oscar saves it, so visualsearch's ``post_save``
handler marks it pending and, once the import commits, a Celery worker embeds it (or run
``manage.py visualsearch_reindex`` to embed inline)::

    cd examples/oscar && ../../.venv/bin/python load_photos.py --limit 200
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PHOTOS = HERE.parent.parent.parent / "shared" / "data" / "fashion-products"


def write_import_files(photos: Path, out: Path, limit: int) -> tuple[Path, Path]:
    """Oscar's catalogue CSV and a folder of UPC-named photo links for the first ``limit``
    products of ``photos``; returns both paths."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    catalogue = out / "catalogue.csv"
    with open(photos / "products.csv", newline="") as source, open(catalogue, "w") as target:
        writer = csv.writer(target, escapechar="\\", doublequote=False)
        count = 0
        for row in csv.DictReader(source):
            photo = photos / row["file"]
            if count >= limit:
                break
            if not photo.is_file():
                continue
            upc = f"fashion-{row['id']}"
            writer.writerow(
                [
                    row["articleType"],
                    f"{row['masterCategory']} > {row['subCategory']}",
                    upc,
                    row["productDisplayName"],
                    f"{row['baseColour']} {row['articleType'].lower()}, {row['usage']}.",
                    "Fashion partner",
                    f"sku-{row['id']}",
                    f"{10 + int(row['id']) % 90}.00",
                    10,
                ]
            )
            (images / f"{upc}.jpg").symlink_to(photo)
            count += 1
    return catalogue, images


def load(photos: Path = DEFAULT_PHOTOS, limit: int = 200) -> None:
    """Import ``limit`` products with their photos (Django must be set up)."""
    from django.core.management import call_command

    if not (photos / "products.csv").is_file():
        raise SystemExit(f"No product photos at {photos} (products.csv, images/<id>.jpg).")
    with tempfile.TemporaryDirectory(prefix="oscar-import-") as out:
        catalogue, images = write_import_files(photos, Path(out), limit)
        call_command("oscar_import_catalogue", str(catalogue))
        call_command("oscar_import_catalogue_images", str(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="the data set")
    parser.add_argument("--limit", type=int, default=200, help="products to import")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oscar_example.settings")
    import django

    django.setup()
    load(args.photos, args.limit)
    print(f"Imported up to {args.limit} products from {args.photos}.")


if __name__ == "__main__":
    main()
