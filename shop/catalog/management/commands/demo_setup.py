"""``manage.py demo_setup``: an admin user, the demo catalog, and its embeddings.

Embeddings are the image vectors and, with text search on (the demo's settings), the
product texts: full-text vectors and MiniLM vectors of names and descriptions.

The catalog is ``../shared/data/fashion-products`` when present (6,573 real product photos),
otherwise a small generated one (coloured shapes), or the CSV named by ``--csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from PIL import Image, ImageDraw

from shop.catalog.models import Product

SHARED_CATALOG = settings.BASE_DIR.parent / "shared" / "data" / "fashion-products" / "products.csv"
COLOURS = ["red", "blue", "green", "orange", "purple", "black", "gold", "teal"]
SHAPES = {"Round bags": "ellipse", "Square scarves": "rectangle", "Striped shirts": "stripes"}


class Command(BaseCommand):
    help = "Create the demo admin user, import the demo catalog and embed its images and texts."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--csv", type=Path, help="catalog CSV to import instead")
        parser.add_argument("--limit", type=int, help="import at most this many products")
        parser.add_argument("--no-embed", action="store_true", help="leave embedding to workers")
        parser.add_argument(
            "--allow-production",
            action="store_true",
            help="run even with DEBUG off (it creates the superuser admin / admin)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG and not options["allow_production"]:
            raise CommandError(
                "DEBUG is off: demo_setup would create the superuser admin / admin on what looks "
                "like a production site. Use createsuperuser and import_catalog instead, or pass "
                "--allow-production if this really is a throw-away demo."
            )
        user_model = get_user_model()
        if not user_model.objects.filter(is_superuser=True).exists():
            user_model.objects.create_superuser("admin", "admin@example.com", "admin")
            self.stdout.write("Created superuser admin / admin (demo only).")

        if Product.objects.exists():
            self.stdout.write(f"Catalog already has {Product.objects.count()} products.")
        else:
            path = options["csv"] or (SHARED_CATALOG if SHARED_CATALOG.exists() else None)
            if path is None:
                path = self._generate(settings.BASE_DIR / ".demo" / "generated")
                self.stdout.write(
                    f"No shared catalog found; generated a small one in {path.parent}."
                )
            # Embedding runs inline below, in large batches: no per-product tasks meanwhile.
            extra = ["--defer-embedding"]
            extra += ["--limit", str(options["limit"])] if options["limit"] else []
            call_command(
                "import_catalog", str(path), *extra, stdout=self.stdout, stderr=self.stderr
            )
        if not options["no_embed"]:
            call_command("visualsearch_reindex", stdout=self.stdout, stderr=self.stderr)

    def _generate(self, folder: Path) -> Path:
        """Write a small catalog of coloured shapes (images + CSV) to ``folder``."""
        (folder / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        for category, shape in SHAPES.items():
            for colour in COLOURS:
                external_id = f"gen-{shape}-{colour}"
                file = f"images/{external_id}.jpg"
                draw_product(colour, shape).save(folder / file, quality=90)
                rows.append(
                    {
                        "external_id": external_id,
                        "image": file,
                        "name": f"{colour.title()} {category[:-1].lower()}",
                        "category": category,
                        "description": f"A {colour} {shape} on white.",
                    }
                )
        path = folder / "products.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path


def draw_product(colour: str, shape: str, size: int = 224) -> Image.Image:
    """A product-like photo: one coloured shape on a white background."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 6, size // 6, 5 * size // 6, 5 * size // 6)
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "stripes":
        for x in range(box[0], box[2], 20):
            draw.rectangle((x, box[1], x + 9, box[3]), fill=colour)
    else:
        draw.rectangle(box, fill=colour)
    return image
