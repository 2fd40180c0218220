"""``manage.py import_catalog PATH.csv``: load products and their images from a CSV file.

One row per image; rows sharing an id make one product with several images. The image column
holds a path (relative to the CSV's folder, or absolute) or an http(s) URL. Paths must lead
into the CSV's folder or a ``--root`` folder; URLs must lead to public addresses unless the
setting ``IMPORT_ALLOW_PRIVATE_URLS`` is on (see ``shop.catalog.downloads``). Every image is
decoded as the embedding worker will decode it. Re-running the same
file creates nothing new: an image is known by its product and its ``source`` string, and a
product by its external id; a product's fields come from its first row, and a changed row
updates them. Bad rows are reported on stderr and skipped; they never stop the import.

The file is read twice: once to find each product's last row, then streamed, each product
written once its last row is read. Only a window of products is fetched at a time, so memory
depends on ``--workers``, not on the size of the catalog.
"""

from __future__ import annotations

import csv
import re
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import partial
from http.client import HTTPException
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DataError, IntegrityError, models, transaction
from django.utils.text import slugify
from tqdm import tqdm

from shop.catalog.downloads import TooLarge, download
from shop.catalog.models import Category, Product, ProductImage
from visualsearch.conf import visualsearch_settings
from visualsearch.ingest.handlers import deferred_embedding
from visualsearch.ingest.images import InvalidImage, decode_image

ALIASES = {  # field: the CSV columns that may hold it, first found wins
    "external_id": ("id", "external_id"),
    "image": ("file", "image"),
    "name": ("productDisplayName", "name"),
    "category": ("articleType", "category"),
}
# Columns never shown in the built description (the category column is added per file).
OWN_COLUMNS = {"description", "price", "in_stock"}
OWN_COLUMNS |= {column for f in ("external_id", "image", "name") for column in ALIASES[f]}
LABELS = {"baseColour": "Colour", "masterCategory": "Department", "subCategory": "Section"}
TRUE, FALSE = {"1", "true", "yes", "y", "t"}, {"0", "false", "no", "n", "f"}
UNCATEGORIZED = "Uncategorized"
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")  # two letters at least: C:\ is a path
#: File name extension of each format the import accepts (visualsearch's FORMATS).
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp"}
EXTENSIONS |= {"AVIF": ".avif", "BMP": ".bmp", "TIFF": ".tif"}


class RowError(Exception):
    """A row that cannot be imported; the message is the reason shown to the user."""


@dataclass
class ImageRow:
    number: int  # the row in the file, the header being row 1
    source: str
    position: int
    future: Future | None = None  # the bytes, when the image has to be fetched


@dataclass
class ProductRows:
    external_id: str
    fields: dict[str, Any]
    images: list[ImageRow] = field(default_factory=list)
    complete: bool = False  # its last row has been read


def fetch_image(
    source: str,
    base_dir: Path,
    *,
    timeout: float,
    max_bytes: int,
    roots: tuple[Path, ...] = (),
    allow_private: bool = False,
) -> bytes:
    """The bytes of a local file or an http(s) URL, checked to be a usable image, else ``RowError``.

    A path must resolve (symbolic links followed) into ``base_dir`` or one of ``roots``; a URL
    must lead to public addresses unless ``allow_private``.
    """
    scheme = _SCHEME.match(source)
    try:
        if scheme and scheme.group(1).lower() in {"http", "https"}:
            data = download(
                source, timeout=timeout, max_bytes=max_bytes, allow_private=allow_private
            )
        elif scheme:
            raise RowError(f"unsupported URL scheme {scheme.group(1)!r} (only http and https)")
        else:
            with local_path(source, base_dir, roots).open("rb") as handle:
                data = read_at_most(handle, max_bytes + 1)
    except HTTPError as exc:
        raise RowError(f"HTTP {exc.code} {exc.reason} for {source}") from None
    except URLError as exc:
        raise RowError(f"cannot fetch {source}: {exc.reason}") from None
    except TimeoutError:
        raise RowError(f"timed out after {timeout:g}s fetching {source}") from None
    except FileNotFoundError:
        raise RowError(f"file not found: {source}") from None
    except TooLarge:
        raise RowError(f"{source} is larger than --max-bytes {max_bytes:,}") from None
    except (OSError, ValueError, HTTPException) as exc:
        raise RowError(f"cannot read {source}: {exc!r}") from None
    if len(data) > max_bytes:
        raise RowError(f"{source} is larger than --max-bytes {max_bytes:,}")
    try:  # as the worker will: a file it could not use is never imported
        decode_image(data, max_pixels=int(visualsearch_settings.MAX_IMAGE_PIXELS))
    except InvalidImage as exc:
        reason = str(exc).rstrip(".")
        raise RowError(f"not a usable image: {source}: {reason[:1].lower()}{reason[1:]}") from None
    return data


def read_at_most(handle: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``handle``, read in chunks: the memory taken follows the file's
    size, where one ``read(limit)`` would reserve ``limit`` bytes first."""
    chunks, size = [], 0
    while size < limit and (chunk := handle.read(min(64 * 1024, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def local_path(source: str, base_dir: Path, roots: tuple[Path, ...] = ()) -> Path:
    """``source`` resolved against ``base_dir``; ``RowError`` unless it stays inside ``base_dir``
    or one of ``roots`` (all resolved already), so a CSV cannot read ``../../etc/passwd``."""
    path = (base_dir / Path(source).expanduser()).resolve()
    if any(path.is_relative_to(root) for root in (base_dir, *roots)):
        return path
    raise RowError(f"{source} is outside the CSV's folder (allow another folder with --root)")


def find_columns(path: Path, header: list[str], category: str | None) -> dict[str, str | None]:
    """The column holding each field (``ALIASES``), or ``CommandError`` if one is missing."""
    columns = {f: next((c for c in names if c in header), None) for f, names in ALIASES.items()}
    if category and category not in header:
        raise CommandError(f"{path} has no column {category!r}.")
    columns["category"] = category or columns["category"]
    if missing := [f for f in ("external_id", "image", "name") if not columns[f]]:
        accepted = " or ".join(c for f in missing for c in ALIASES[f])
        raise CommandError(f"{path} needs the columns {accepted}.")
    return columns


def check_row(external_id: str, source: str) -> None:
    """``RowError`` unless the row has an id and an image of acceptable lengths."""
    if not external_id or not source:
        raise RowError("missing id" if not external_id else "missing image")
    if len(external_id) > 100 or len(source) > 1000:
        raise RowError("id longer than 100 or image longer than 1000 chars")


def product_fields(row: dict[str, str], columns: dict[str, str | None]) -> dict[str, Any]:
    """A product's fields from its first row, or ``RowError``."""
    value = lambda column: (row.get(column) or "").strip() if column else ""  # noqa: E731
    name = value(columns["name"]) or value("name")
    if not name:
        raise RowError("missing name")
    try:
        price = Decimal(value("price")) if value("price") else None
        if price is not None and not (0 <= price < 10**8):
            raise InvalidOperation
    except InvalidOperation:
        raise RowError(f"invalid price {value('price')!r}") from None
    stock = value("in_stock").lower()
    if stock and stock not in TRUE | FALSE:
        raise RowError(f"invalid in_stock {value('in_stock')!r}")
    return {
        "name": name[:300],
        "description": value("description") or describe(row, set(columns.values())),
        "category": value(columns["category"])[:200] or UNCATEGORIZED,
        "price": price if price is not None else demo_price(value(columns["external_id"])),
        "in_stock": stock not in FALSE,
    }


def describe(row: dict[str, str], skip: set[str | None]) -> str:
    """Readable text from the label columns: ``Gender: Women. Colour: White.``…"""
    parts = []
    for column, value in row.items():
        if column and column not in skip | OWN_COLUMNS and value and value.strip():
            label = LABELS.get(column) or re.sub(r"(?<=[a-z])(?=[A-Z])|_", " ", column)
            parts.append(f"{label.strip().capitalize()}: {value.strip()}.")
    return " ".join(parts)


def demo_price(external_id: str) -> Decimal:
    """A made-up but stable price between 9.99 and 199.99, for catalogs without prices."""
    return Decimal(f"{9 + zlib.crc32(external_id.encode()) % 191}.99")


def filename(source: str, data: bytes) -> str:
    """The stored copy's file name: the name a path or URL ends with, with the extension of
    the format ``data`` decodes as, never the source's own (``x.html`` holding a GIF is
    stored as ``x.gif``, and so served as an image, not as a page)."""
    from io import BytesIO

    from PIL import Image

    from visualsearch.ingest.images import FORMATS

    if _SCHEME.match(source):
        name = PurePosixPath(unquote(urlsplit(source).path)).name
    else:
        name = Path(source).name
    Image.init()
    readable = [name for name in FORMATS if name in Image.OPEN]
    with Image.open(BytesIO(data), formats=readable) as image:  # decoded already: known format
        extension = EXTENSIONS[image.format]
    return (PurePosixPath(name).stem or "image") + extension


def unique_slug(model: type[models.Model], base: str, max_length: int) -> str:
    """``base`` cut to ``max_length``, with ``-2``, ``-3``… appended while it is taken."""
    slug, n = base[:max_length], 1
    while model._base_manager.filter(slug=slug).exists():
        n += 1
        slug = f"{base[: max_length - len(str(n)) - 1]}-{n}"
    return slug


class Command(BaseCommand):
    help = "Import products and images from a CSV file (one row per image), idempotently."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("csv_path", type=Path, help="CSV file, one row per image.")
        parser.add_argument("--category-column", help="Default: articleType, else category.")
        parser.add_argument("--workers", type=int, default=8, help="Parallel fetches (8).")
        parser.add_argument("--timeout", type=float, default=20.0, help="Seconds per URL (20).")
        parser.add_argument(
            "--max-bytes",
            type=int,
            help="Per file (default: the VISUALSEARCH setting MAX_IMAGE_BYTES, 20 MB).",
        )
        parser.add_argument(
            "--root",
            action="append",
            type=Path,
            default=[],
            help="A folder image paths may lead into besides the CSV's own (repeatable).",
        )
        parser.add_argument("--limit", type=int, help="Import only the first N products.")
        parser.add_argument("--dry-run", action="store_true", help="Check every row, save nothing.")
        parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
        parser.add_argument(
            "--defer-embedding",
            action="store_true",
            help="Mark new images pending without enqueueing them (run visualsearch_reindex).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.options, self.base_dir = options, options["csv_path"].resolve().parent
        self.counts = dict.fromkeys(("created", "updated", "same", "added", "kept", "skipped"), 0)
        if options["workers"] < 1 or (options["limit"] is not None and options["limit"] < 1):
            raise CommandError("--workers and --limit must be at least 1.")
        path, category, limit = options["csv_path"], options["category_column"], options["limit"]
        last_rows = self.index_csv(path, category, limit)
        disable = options["no_progress"] or not self.stderr.isatty()
        self.progress = tqdm(
            total=len(last_rows), unit="product", file=self.stderr._out, disable=disable
        )
        fetch = partial(
            fetch_image,
            base_dir=self.base_dir,
            timeout=options["timeout"],
            max_bytes=options["max_bytes"] or int(visualsearch_settings.MAX_IMAGE_BYTES),
            roots=tuple(root.expanduser().resolve() for root in options["root"]),
            allow_private=bool(getattr(settings, "IMPORT_ALLOW_PRIVATE_URLS", False)),
        )
        size = 4 * options["workers"]  # products fetched at a time: bounds the bytes in memory
        window: deque[ProductRows] = deque()  # products being fetched, written in file order
        deferred = deferred_embedding() if options["defer_embedding"] else nullcontext()
        with deferred, self.progress, ThreadPoolExecutor(options["workers"]) as pool:
            products = self.read_csv(path, category, limit, last_rows)
            while batch := list(islice(products, size)):
                known = self.known_images(batch)  # imported before: not fetched again
                for product in batch:
                    for image in product.images:
                        if (product.external_id, image.source) not in known:
                            image.future = pool.submit(fetch, image.source)
                    window.append(product)
                    if len(window) > size:
                        self.import_product(window.popleft())
            while window:
                self.import_product(window.popleft())
        c = self.counts
        self.stdout.write(
            ("Dry run, nothing saved. " if options["dry_run"] else "")
            + f"Products: {c['created']} created, {c['updated']} updated, {c['same']} unchanged. "
            f"Images: {c['added']} added, {c['kept']} unchanged. Rows skipped: {c['skipped']}."
        )

    def skip(self, number: int, reason: str) -> None:
        """Report a bad row on stderr (above the progress bar) and count it."""
        self.counts["skipped"] += 1
        with tqdm.external_write_mode(file=self.stderr._out):
            self.stderr.write(f"row {number}: {reason}; skipped", self.style.WARNING)

    def read_rows(self, path: Path, category: str | None) -> Iterator[tuple[int, dict[str, str]]]:
        """The file's rows numbered as in the file (the header being row 1), streamed; the
        header is checked first and ``self.columns`` set from it."""
        try:
            with path.open(encoding="utf-8-sig", newline="") as handle:
                reader = csv.DictReader(handle)
                self.columns = find_columns(path, reader.fieldnames or [], category)
                yield from enumerate(reader, start=2)
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from exc
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CommandError(f"{path} is not a readable UTF-8 CSV file: {exc}") from exc

    def row_keys(self, row: dict[str, str]) -> tuple[str, str]:
        """The row's product id and image source."""
        id_column, image_column = self.columns["external_id"], self.columns["image"]
        return (row.get(id_column) or "").strip(), (row.get(image_column) or "").strip()

    def index_csv(self, path: Path, category: str | None, limit: int | None) -> dict[str, int]:
        """The id of every product the import will write, with the number of its last row.

        A first pass, silent: ``read_csv`` makes the same choices again, reporting them.
        """
        last_rows: dict[str, int] = {}
        for number, row in self.read_rows(path, category):
            external_id, source = self.row_keys(row)
            if external_id in last_rows:
                last_rows[external_id] = number
            elif limit is None or len(last_rows) < limit:
                try:
                    check_row(external_id, source)
                    product_fields(row, self.columns)
                except RowError:
                    continue
                last_rows[external_id] = number
        if not self.columns["category"]:
            self.stderr.write(f"No category column: products go to {UNCATEGORIZED!r}.")
        return last_rows

    def read_csv(
        self, path: Path, category: str | None, limit: int | None, last_rows: dict[str, int]
    ) -> Iterator[ProductRows]:
        """The products in the order of their first rows, each once its last row is read
        (``last_rows``, from ``index_csv``); rows that lack what is needed are skipped."""
        groups: dict[str, ProductRows] = {}  # products still being read, in file order
        created = 0
        for number, row in self.read_rows(path, category):
            external_id, source = self.row_keys(row)
            if limit is not None and created >= limit and external_id not in groups:
                continue
            try:
                check_row(external_id, source)
                group = groups.get(external_id)
                if group is None:
                    fields = product_fields(row, self.columns)
                    group = groups[external_id] = ProductRows(external_id, fields)
                    created += 1
                elif any(image.source == source for image in group.images):
                    raise RowError(f"duplicate image {source} for id {external_id}")
            except RowError as exc:
                self.skip(number, str(exc))
            else:
                group.images.append(ImageRow(number, source, len(group.images)))
            if external_id in groups and last_rows.get(external_id) == number:
                groups[external_id].complete = True
            while groups and (first := next(iter(groups.values()))).complete:
                yield groups.pop(first.external_id)
        yield from groups.values()  # none unless the file changed since it was indexed

    def known_images(self, products: list[ProductRows]) -> set[tuple[str, str]]:
        """``(external id, source)`` of the images of ``products`` imported before."""
        return set(
            ProductImage.objects.filter(product__external_id__in=[p.external_id for p in products])
            .exclude(source="")
            .values_list("product__external_id", "source")
        )

    def import_product(self, rows: ProductRows) -> None:
        """Save one product and its new images in one transaction, so they are enqueued together."""
        images, before = [], dict(self.counts)
        for image in rows.images:
            future, image.future = image.future, None  # its bytes go once the product is saved
            try:
                images.append((image, future.result() if future else None))
            except RowError as exc:
                self.skip(image.number, str(exc))
        try:
            with transaction.atomic():
                self.save_product(rows, images)
        except (IntegrityError, DataError) as exc:  # e.g. another import of the same product
            self.counts = before
            for image, _ in images:
                self.skip(image.number, f"database error: {exc}".strip())
        self.progress.update()

    def save_product(self, rows: ProductRows, images: list[tuple[ImageRow, bytes | None]]) -> None:
        """Create or update the product, add its new images, realign the known ones."""
        dry_run, fields = self.options["dry_run"], dict(rows.fields)
        product = Product.objects.filter(external_id=rows.external_id).first()
        existing = {i.source: i for i in product.images.exclude(source="")} if product else {}
        if product is None and not images:
            return  # every image row failed: no product without a picture
        label = fields.pop("category")
        category = Category.objects.filter(name=label).first()
        if category is None and not dry_run:
            slug = unique_slug(Category, slugify(label) or "category", 200)
            category = Category.objects.create(name=label, slug=slug)
        fields["category_id"] = category.pk if category else None
        if product is None:
            self.counts["created"] += 1
            base = f"{slugify(fields['name'])[:250]}-{slugify(rows.external_id)}".strip("-")
            base = base or "product"
            if not dry_run:
                product = Product.objects.create(
                    external_id=rows.external_id, slug=unique_slug(Product, base, 300), **fields
                )
        elif changed := [name for name, v in fields.items() if getattr(product, name) != v]:
            self.counts["updated"] += 1
            if not dry_run:
                for name in changed:
                    setattr(product, name, fields[name])
                product.save(update_fields=changed)
        else:
            self.counts["same"] += 1
        for image, data in images:
            if old := existing.get(image.source):
                self.counts["kept"] += 1
                if not dry_run and (old.position, old.alt_text) != (image.position, fields["name"]):
                    ProductImage.objects.filter(pk=old.pk).update(
                        position=image.position, alt_text=fields["name"]
                    )
            elif data is None:  # known when the run started, deleted since
                self.skip(image.number, "the image was deleted during the import; run it again")
            else:
                self.counts["added"] += 1
                if not dry_run:
                    ProductImage.objects.create(
                        product=product,
                        position=image.position,
                        alt_text=fields["name"],
                        source=image.source,
                        image=ContentFile(data, name=filename(image.source, data)),
                    )
