"""Near-duplicate detection (visualsearch.query.duplicates) against the whole dev catalog.

    .venv/bin/python bench/duplicates.py                  # 600 originals, 2,400 copies
    .venv/bin/python bench/duplicates.py --originals 200 --seed 1

1. Copies the catalog (6,573 products, images, stored EfficientNet-Lite0 vectors) read-only
   from ``bench/quality.py``'s database (``--catalog-database``) into one of its own
   (``--database``, default ``bench_duplicates``; image files in ``media/bench/<database>``).
2. Makes copies of a sample of originals, as a shop's staff re-upload them: a JPEG re-encode
   at quality 30, a resize to half the size, a 5 % crop (of width and height, at a random
   offset) and a mirror image, each as a new product, embedded by the app's own pipeline
   (``embed_images``) with the shop's encoder, EfficientNet-Lite0.
3. Scores every candidate pair once (the detector's ``candidate_links`` and ``check_links``
   at loose limits, kept in ``.cache/bench/``), tunes ``DUPLICATE_THRESHOLD`` and
   ``DUPLICATE_PIXEL_DIFFERENCE`` on one half of the catalog, reports on the other, then
   times ``find_duplicates`` at the tuned values (checking it finds the same groups).

Precision and recall are over pairs of images. Two images are the same photo when one is a
copy of the other, both are copies of one original, or they are catalog files with the
same bytes (the dev catalog holds 65 such groups: one photo on two products); every other
pair that the detector puts in one group is a false positive, whatever it looks like. The
catalog is split in halves by a hash of the product's external id (copies go with their
original); a half's pairs are those with both images in it, and the groups are always
found over everything. Writes ``bench/results/duplicates.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.machine import load_average, machine  # noqa: E402
from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.shop import setup_django, use_shop_settings  # noqa: E402
from bench.common.tables import table  # noqa: E402

CATALOG_DB = "quality_fashion_products_products_0cd27c42_efficientnet"
TRANSFORMS = ("jpeg", "resize", "crop", "mirror")
SPLIT = "sha256(external_id)[0] % 2: 1 tune, 0 report"
#: The loosest limits scored, the grids tuned over.
LOOSE_THRESHOLD, LOOSE_DIFFERENCE = 0.6, 0.04
THRESHOLDS = [round(t, 2) for t in np.arange(0.60, 0.991, 0.01)]
DIFFERENCES = [round(d, 3) for d in np.arange(0.010, 0.0401, 0.002)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--originals", type=int, default=600, help="originals copied (600)")
    parser.add_argument("--seed", type=int, default=0, help="sample and crop offsets (0)")
    parser.add_argument("--neighbours", type=int, default=20, help="HNSW neighbours (20)")
    parser.add_argument("--database", default="bench_duplicates")
    parser.add_argument("--catalog-database", default=CATALOG_DB)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "duplicates.json")
    parser.add_argument("--rescore", action="store_true", help="score the pairs again")
    args = parser.parse_args()
    if args.originals < 2 or not 1 <= args.neighbours <= 1000:
        parser.error("--originals must be at least 2, --neighbours in 1..1000")
    args.catalog_media = BASE_DIR / "media/quality" / args.catalog_database  # quality.py's
    return args


def half(external_id: str) -> str:
    """``"tune"`` or ``"report"``, by a hash of the product's external id."""
    return "tune" if hashlib.sha256(external_id.encode()).digest()[0] % 2 else "report"


def copy_catalog(args: argparse.Namespace) -> None:
    """The catalog's categories, products and ready images (vectors included), read from
    ``args.catalog_database`` into the bench database, unless they are there already."""
    from django.conf import settings

    from shop.catalog.models import Category, Product, ProductImage

    if Product.objects.exclude(external_id__startswith="dup-").exists():
        return
    clock, source = time.perf_counter(), "catalog"
    categories = {
        old: Category.objects.get_or_create(name=name, defaults={"slug": slug})[0]
        for old, name, slug in Category.objects.using(source).values_list("pk", "name", "slug")
    }
    fields = ("pk", "external_id", "name", "slug", "category_id", "price", "description")
    rows = list(Product.objects.using(source).values_list(*fields))
    created = Product.objects.bulk_create(
        Product(external_id=e, name=n, slug=s, category=categories[c], price=p, description=d)
        for _pk, e, n, s, c, p, d in rows
    )
    products = {row[0]: product for row, product in zip(rows, created, strict=True)}
    images = ProductImage.objects.using(source).filter(embedding_status="ready")
    new = []
    for image in images.iterator(chunk_size=500):
        product, target = products[image.product_id], Path(settings.MEDIA_ROOT) / image.image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copyfile(args.catalog_media / image.image.name, target)
        new.append(
            ProductImage(
                product=product, category=product.category, image=image.image.name,
                source=image.source, embedding=image.embedding, embedding_hash=image.embedding_hash,
                embedding_model=image.embedding_model, embedding_status="ready",
            )
        )  # fmt: skip
    ProductImage.objects.bulk_create(new, batch_size=500)
    print(f"Copied {len(new):,} images in {time.perf_counter() - clock:.0f} s.")


def transformed(data: bytes, transform: str, rng: np.random.Generator) -> bytes:
    """A copy of the JPEG ``data`` as a staff member might upload it again."""
    from PIL import Image, ImageOps

    image = Image.open(io.BytesIO(data)).convert("RGB")
    quality = 90
    if transform == "jpeg":
        quality = 30
    elif transform == "resize":
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    elif transform == "crop":
        cut_x, cut_y = round(image.width * 0.05), round(image.height * 0.05)
        x, y = int(rng.integers(0, cut_x + 1)), int(rng.integers(0, cut_y + 1))
        image = image.crop((x, y, x + image.width - cut_x, y + image.height - cut_y))
    elif transform == "mirror":
        image = ImageOps.mirror(image)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_copies(args: argparse.Namespace) -> dict[str, list]:
    """Copies of ``args.originals`` originals (half from each half of the catalog) as new
    products, embedded inline; returns ``{"tune": [eid, …], "report": [eid, …]}``."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from shop.catalog.models import Product, ProductImage
    from visualsearch.ingest.pipeline import embed_images

    def key(eid: str) -> str:
        return hashlib.sha256(f"{args.seed}:{eid}".encode()).hexdigest()

    catalog = Product.objects.exclude(external_id__startswith="dup-").select_related("category")
    by_half: dict[str, list] = {"tune": [], "report": []}
    for product in sorted(catalog, key=lambda p: key(p.external_id)):
        by_half[half(product.external_id)].append(product)
    chosen = {name: items[: args.originals // 2] for name, items in by_half.items()}
    rng = np.random.default_rng(args.seed)
    made: list[tuple] = []
    for product in [p for items in chosen.values() for p in items]:
        with product.images.first().image.open("rb") as file:
            data = file.read()
        for transform in TRANSFORMS:
            eid = f"dup-{product.external_id}-{transform}"
            copy = transformed(data, transform, rng)  # always: the same offsets on a re-run
            if not Product.objects.filter(external_id=eid).exists():
                made.append((product, eid, transform, copy))
    # bulk_create: no signals, so no task for a worker that reads another database.
    copies = Product.objects.bulk_create(
        Product(external_id=eid, name=f"{p.name} ({transform})", slug=eid,
                category=p.category, price=p.price)
        for p, eid, transform, _data in made
    )  # fmt: skip
    ProductImage.objects.bulk_create(
        ProductImage(product=copy, category=copy.category,
                     image=default_storage.save(f"dups/{eid}.jpg", ContentFile(data)))
        for copy, (_p, eid, _t, data) in zip(copies, made, strict=True)
    )  # fmt: skip
    copies = ProductImage.objects.filter(product__external_id__startswith="dup-")
    pending = list(copies.exclude(embedding_status="ready").values_list("pk", flat=True))
    clock = time.perf_counter()
    for start in range(0, len(pending), 256):
        embed_images(pending[start : start + 256])
    if pending:
        print(f"Embedded {len(pending):,} copies in {time.perf_counter() - clock:.0f} s.")
    return {name: [p.external_id for p in items] for name, items in chosen.items()}


def ground_truth() -> tuple[dict, dict, dict]:
    """``({image pk: photo id}, {image pk: half}, {image pk: (external id, transform)})``."""
    from shop.catalog.models import ProductImage

    fields = ("pk", "product__external_id", "embedding_hash")
    rows = ProductImage.objects.filter(embedding_status="ready").values_list(*fields)
    photo, halves, names, by_eid = {}, {}, {}, {}
    for pk, eid, digest in rows:
        if not eid.startswith("dup-"):
            photo[pk], by_eid[eid] = digest, digest
    for pk, eid, _digest in rows:
        original, transform = eid[4:].rsplit("-", 1) if eid.startswith("dup-") else (eid, None)
        photo.setdefault(pk, by_eid[original])
        halves[pk], names[pk] = half(original), (original, transform)
    return photo, halves, names


def pair_counts(groups: list[list], photo: dict, halves: dict, which: str | None) -> tuple:
    """``(true positives, predicted pairs, true pairs)`` among the pairs of ``which`` half
    (``None``: all pairs); ``groups`` are lists of image pks."""

    def pairs(counter: Counter) -> int:
        return sum(n * (n - 1) // 2 for n in counter.values())

    def inside(pk: Any) -> bool:
        return which is None or halves[pk] == which

    true_pairs = pairs(Counter(photo[pk] for pk in photo if inside(pk)))
    tp = predicted = 0
    for members in groups:
        members = [pk for pk in members if inside(pk)]
        predicted += len(members) * (len(members) - 1) // 2
        tp += pairs(Counter(photo[pk] for pk in members))
    return tp, predicted, true_pairs


def scores(counts: tuple) -> dict[str, float]:
    """Precision, recall and F1 of ``pair_counts``, with the counts."""
    tp, predicted, true_pairs = counts
    precision = tp / predicted if predicted else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rounded = {"precision": precision, "recall": recall, "f1": f1}
    counts = {"true_positive_pairs": tp, "flagged_pairs": predicted, "true_pairs": true_pairs}
    return {**{key: round(value, 4) for key, value in rounded.items()}, **counts}


def groups_at(links: list, threshold: float, difference: float | None) -> list[list]:
    """The groups (union-find, as the detector's ``group_links``) of the links kept."""
    parent: dict[Any, Any] = {}

    def root(pk: Any) -> Any:
        while parent.setdefault(pk, pk) != pk:
            parent[pk] = parent[parent[pk]]  # path halving
            pk = parent[pk]
        return pk

    for link in links:
        if link.similarity >= threshold and (difference is None or link.difference <= difference):
            first, second = root(link.a), root(link.b)
            parent[max(first, second)] = min(first, second)
    members: dict[Any, list] = {}
    for pk in sorted(parent):
        members.setdefault(root(pk), []).append(pk)
    return list(members.values())


def tune(links: list, photo: dict, halves: dict, pixel: bool) -> tuple[float, float | None, dict]:
    """The (threshold, difference) of the best F1 on the tuning half, and its scores. Of the
    values within 0.001 of the best F1: the highest threshold (fewest pairs to check) and the
    middle of the differences that reach it there (the widest margin both ways)."""
    if pixel:  # links beyond the loosest difference never count
        links = [link for link in links if link.difference <= DIFFERENCES[-1]]
    found = {}
    for threshold in THRESHOLDS:
        kept = [link for link in links if link.similarity >= threshold]
        for difference in DIFFERENCES if pixel else [None]:
            groups = groups_at(kept, 0, difference)
            found[threshold, difference] = scores(pair_counts(groups, photo, halves, "tune"))
    best = max(result["f1"] for result in found.values())
    near = [key for key, result in found.items() if result["f1"] >= best - 0.001]
    threshold = max(t for t, _d in near)
    differences = sorted(d for t, d in near if t == threshold and d is not None)
    difference = differences[len(differences) // 2] if differences else None
    return threshold, difference, found[threshold, difference]


def per_transform(groups: list[list], names: dict, halves: dict) -> dict[str, float]:
    """Share of the report half's copies found in their original's group, by transform."""
    group_of = {pk: index for index, members in enumerate(groups) for pk in members}
    originals = {names[pk][0]: pk for pk in names if names[pk][1] is None}
    found, total = Counter(), Counter()
    for pk, (original, transform) in names.items():
        if transform is not None and halves[pk] == "report":
            total[transform] += 1
            found[transform] += group_of.get(pk, -1) == group_of.get(originals[original], -2)
    return {t: round(found[t] / total[t], 4) for t in TRANSFORMS if total[t]}


def catalog_pairs(groups: list[list], photo: dict, names: dict) -> list[dict]:
    """Pairs of two catalog images (no copy) put together although their bytes differ."""
    catalog = [[pk for pk in members if names[pk][1] is None] for members in groups]
    return [
        {"a": names[a][0], "b": names[b][0]}
        for members in catalog for i, a in enumerate(members) for b in members[i + 1 :]
        if photo[a] != photo[b]
    ]  # fmt: skip


def score_links(args: argparse.Namespace, saved: Path) -> tuple[list, dict]:
    """Every candidate pair at the loosest limits, with its pixel difference, and the time
    taken; kept in ``saved`` for the next run with the same copies (``--rescore``: anew)."""
    from visualsearch.query.duplicates import Link, candidate_links, check_links

    if saved.exists() and not args.rescore:
        links, timings, neighbours = pickle.loads(saved.read_bytes())
        if neighbours == args.neighbours:
            return links, timings
    clock = time.perf_counter()
    links = candidate_links(LOOSE_THRESHOLD, args.neighbours)
    timings = {"candidates_s": round(time.perf_counter() - clock, 1)}
    clock = time.perf_counter()
    # An unreadable file (None) never counts: as far as the grids go, infinitely different.
    links = [
        Link(link.a, link.b, link.similarity, 9.0) if link.difference is None else link
        for link in check_links(links, LOOSE_DIFFERENCE)
    ]
    timings["pixel_check_loose_s"] = round(time.perf_counter() - clock, 1)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_bytes(pickle.dumps((links, timings, args.neighbours)))
    return links, timings


def main() -> None:
    args = parse_args()
    os.environ["VISUALSEARCH_DB_NAME"] = args.database
    os.environ["VISUALSEARCH_ENCODER"] = "efficientnet"
    os.environ.setdefault("MEDIA_ROOT", str(BASE_DIR / "media" / "bench" / args.database))
    use_shop_settings()
    from django.conf import settings

    # The catalog's database, read only (it is bench/quality.py's).
    settings.DATABASES["catalog"] = {**settings.DATABASES["default"], "NAME": args.catalog_database}
    setup_django()
    from django.core.management import call_command

    from visualsearch.query.duplicates import find_duplicates

    call_command("migrate", verbosity=0)
    copy_catalog(args)
    chosen = make_copies(args)
    photo, halves, names = ground_truth()
    saved = BASE_DIR / ".cache" / "bench" / f"{args.database}-{args.originals}-{args.seed}.pickle"
    links, timings = score_links(args, saved)
    threshold, difference, tuned = tune(links, photo, halves, pixel=True)
    groups = groups_at(links, threshold, difference)
    report = scores(pair_counts(groups, photo, halves, "report"))
    v_threshold, _none, v_tuned = tune(links, photo, halves, pixel=False)
    vectors_only = scores(pair_counts(groups_at(links, v_threshold, None), photo, halves, "report"))
    vectors_only.update(threshold=v_threshold, tuning_half=v_tuned)  # on the report half

    clock = time.perf_counter()
    found = find_duplicates(threshold, pixel_difference=difference, neighbours=args.neighbours)
    timings["find_duplicates_s"] = round(time.perf_counter() - clock, 1)
    same = sorted(map(sorted, groups)) == sorted(group.images for group in found)
    counts = dict(Counter(halves.values()), groups=len(groups))
    originals = {name: len(eids) for name, eids in chosen.items()}
    result = {
        "precision": report["precision"],
        "recall": report["recall"],
        "threshold": threshold,
        "pixel_difference": difference,
        "neighbours": args.neighbours,
        "report_half": report,
        "tuning_half": tuned,
        "all_pairs": scores(pair_counts(groups, photo, halves, None)),
        "per_transform_recall_report_half": per_transform(groups, names, halves),
        "vectors_only": vectors_only,
        "split": {"rule": SPLIT, "images": counts, "originals": originals},
        "catalog_pairs_not_identical": catalog_pairs(groups, photo, names),
        "find_duplicates_same_groups": same,
        "candidate_pairs_scored": len(links),
        "timings": timings,
        "command": "bench/duplicates.py " + " ".join(sys.argv[1:]),
        "machine": {**machine(), "load_average": load_average()},
    }
    print(format_report(result))
    write_json(args.output, result)


def format_report(result: dict) -> str:
    columns = ("precision", "recall", "f1", "flagged_pairs", "true_pairs")
    rows = [
        [name, *(result[key][column] for column in columns)]
        for name, key in (("tuning half", "tuning_half"), ("report half", "report_half"),
                          ("all pairs", "all_pairs"), ("vectors only, report half", "vectors_only"))
    ]  # fmt: skip
    recall = result["per_transform_recall_report_half"]
    return "\n".join([
        f"threshold {result['threshold']}, pixel difference {result['pixel_difference']}, "
        f"{result['neighbours']} neighbours (vectors only: {result['vectors_only']['threshold']})",
        table(["pairs", "precision", "recall", "F1", "flagged", "true"], rows),
        "recall by transform (report half): " + ", ".join(f"{k} {v}" for k, v in recall.items()),
        f"catalog pairs with different bytes grouped: {len(result['catalog_pairs_not_identical'])}",
        f"timings: {result['timings']}; same groups: {result['find_duplicates_same_groups']}",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
