"""``manage.py visualsearch_duplicates``: groups of near-duplicate images and their products.

The same photo uploaded again, re-encoded, resized, cropped a little or mirrored, on one
product or on several (:func:`visualsearch.query.duplicates.find_duplicates`). The groups
found are also kept for the admin's "Duplicate images" page.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from visualsearch.conf import visualsearch_settings
from visualsearch.query.duplicates import (
    DuplicateGroup,
    find_duplicates,
    members,
    remember,
    resolve,
)
from visualsearch.storage.layout import image_storage
from visualsearch.web.display import product_name, product_queryset


class Command(BaseCommand):
    help = (
        "List groups of near-duplicate images (the same photo re-uploaded, re-encoded, "
        "resized, cropped a little or mirrored) with their products."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--threshold",
            type=float,
            help="least cosine similarity of two images' vectors to compare them "
            "(default: the DUPLICATE_THRESHOLD setting)",
        )
        parser.add_argument(
            "--pixel-difference",
            type=float,
            help="largest pixel difference of a duplicate, 0..1 "
            "(default: the DUPLICATE_PIXEL_DIFFERENCE setting)",
        )
        parser.add_argument(
            "--no-pixel-check",
            action="store_true",
            help="group by the vectors alone (fast, but colour variants count as duplicates)",
        )
        parser.add_argument(
            "--neighbours", type=int, help="nearest images compared per image (1..1000)"
        )
        parser.add_argument(
            "--across-products",
            action="store_true",
            help="only groups whose images belong to two products or more",
        )
        parser.add_argument("--json", action="store_true", help="print the groups as JSON")
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    def handle(self, *args: Any, **options: Any) -> None:
        threshold, difference = options["threshold"], options["pixel_difference"]
        neighbours = options["neighbours"]
        if options["no_pixel_check"] and difference is not None:
            raise CommandError("--pixel-difference and --no-pixel-check exclude each other.")
        for name, value in (("--threshold", threshold), ("--pixel-difference", difference)):
            if value is not None and not 0 < value <= 1:
                raise CommandError(f"{name} must be between 0 (excluded) and 1, got {value:g}.")
        if neighbours is not None and not 1 <= neighbours <= 1000:
            raise CommandError(f"--neighbours must be between 1 and 1000, got {neighbours}.")
        try:
            threshold, difference, neighbours = resolve(
                threshold, difference, not options["no_pixel_check"], neighbours
            )
        except (ValueError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        if not image_storage().model.objects.ready().exists():
            raise CommandError(
                "No image has a ready vector of the serving encoder yet: run "
                "`manage.py visualsearch_reindex` first."
            )
        with _Bars(disable=options["no_progress"] or options["json"], file=self.stderr) as bars:
            groups = find_duplicates(
                threshold,
                pixel_difference=difference,
                pixel_check=difference is not None,
                neighbours=neighbours,
                progress=bars.update,
            )
        remember(groups, threshold, difference, neighbours)
        if options["across_products"]:
            groups = [group for group in groups if len(group.product_pks) > 1]
        found = {"threshold": threshold, "pixel_difference": difference, "neighbours": neighbours}
        if options["json"]:
            self.stdout.write(json.dumps({**found, "groups": _plain(groups)}, indent=2))
        else:
            self._print(groups, found)

    def _print(self, groups: list[DuplicateGroup], found: dict[str, Any]) -> None:
        check = (
            f"pixel difference at most {found['pixel_difference']:g}"
            if found["pixel_difference"] is not None
            else "no pixel check"
        )
        images = sum(len(group.images) for group in groups)
        self.stdout.write(
            f"{len(groups)} group(s) of near-duplicate images, {images} images in all "
            f"(similarity at least {found['threshold']:g}, {check}, "
            f"{found['neighbours']} neighbours per image)."
        )
        rows = members(groups, product_queryset())
        for number, group in enumerate(groups, 1):
            difference = group.difference
            self.stdout.write(
                f"\nGroup {number}: {len(group.images)} images of {len(group.product_pks)} "
                f"product(s), vector similarity {group.similarity:.3f} or more"
                + (f", pixel difference {difference:.3f} or less" if difference is not None else "")
            )
            for pk in group.images:
                image, product = rows[pk]
                name = product_name(product) if product is not None else "(not shown)"
                file = getattr(image, visualsearch_settings.IMAGE_FIELD, "") if image else ""
                self.stdout.write(f"  image {pk}  product {group.products[pk]}  {name!r}  {file}")


def _plain(groups: list[DuplicateGroup]) -> list[dict[str, Any]]:
    """The groups for ``--json``: images with their product, name and file."""
    rows = members(groups, product_queryset())
    plain = []
    for group in groups:
        images = []
        for pk in group.images:
            image, product = rows[pk]
            file = getattr(image, visualsearch_settings.IMAGE_FIELD, None) if image else None
            images.append(
                {
                    "image": pk,
                    "product": group.products[pk],
                    "name": product_name(product) if product is not None else None,
                    "file": file.name if file else None,
                }
            )
        plain.append(
            {"images": images, "similarity": group.similarity, "difference": group.difference}
        )
    return plain


class _Bars:
    """One tqdm bar per stage of ``find_duplicates`` (vectors, then pixels), on stderr."""

    LABELS = {"vectors": "neighbours", "pixels": "pixel check"}

    def __init__(self, **options: Any) -> None:
        self.options, self.bars = options, {}

    def update(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            unit = "img" if stage == "vectors" else "pair"
            bar = self.bars[stage] = tqdm(
                total=total, unit=unit, desc=self.LABELS.get(stage, stage), **self.options
            )
        bar.update(done - bar.n)

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for bar in self.bars.values():
            bar.close()
