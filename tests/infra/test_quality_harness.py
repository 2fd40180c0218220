"""bench/quality.py: the search-quality harness, on a small generated catalog."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from PIL import Image, ImageDraw

from shop.catalog.models import Product, ProductImage
from tests.conftest import BASE_DIR, database_url
from visualsearch.encoders import get_encoder
from visualsearch.ingest.pipeline import embed_images

_spec = importlib.util.spec_from_file_location("bench_quality", BASE_DIR / "bench" / "quality.py")
quality = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = quality
_spec.loader.exec_module(quality)

COLORS = ["red", "blue", "green", "orange"]
SHAPES = ["square", "circle"]
VARIANTS = 3


def photo(color: str, shape: str, variant: int) -> bytes:
    """A coloured shape on white, shifted a little per variant (no two photos identical)."""
    image = Image.new("RGB", (96, 96), "white")
    offset = 6 * variant
    box = (12 + offset, 14 + offset // 2, 66 + offset, 70 + offset // 2)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=color)
    out = io.BytesIO()
    image.save(out, "JPEG")
    return out.getvalue()


def label_row(color: str, shape: str) -> dict[str, str]:
    return {"articleType": f"{color} {shape}", "subCategory": shape, "masterCategory": "Toys"}


@pytest.fixture
def catalog(db, category) -> dict[str, dict[str, str]]:
    """24 embedded products (4 colours x 2 shapes x 3 variants); returns their labels."""
    labels = {}
    for color in COLORS:
        for shape in SHAPES:
            for variant in range(VARIANTS):
                external_id = f"{color}-{shape}-{variant}"
                product = Product.objects.create(
                    external_id=external_id,
                    name=f"{color} {shape} {variant}",
                    slug=external_id,
                    category=category,
                )
                # The first variant has two photos: its query vector is their mean.
                for position in range(2 if variant == 0 else 1):
                    ProductImage.objects.create(
                        product=product,
                        position=position,
                        image=ContentFile(
                            photo(color, shape, variant + position * VARIANTS),
                            name=f"{external_id}-{position}.jpg",
                        ),
                    )
                labels[external_id] = label_row(color, shape)
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    return labels


def metric_values(scope: dict) -> list[float]:
    values = [
        *scope["precision_at_k"].values(),
        *scope["chance_precision_at_k"].values(),
        *scope["map_at_k"].values(),
        scope["recall_at_k_hnsw_vs_exact"],
        scope["self_match"],
        scope["self_match_strictly_first"],
    ]
    return [value for value in values if value is not None]


def test_evaluate_on_a_small_catalog(catalog, category):
    pending = Product.objects.create(external_id="pending", name="x", slug="x", category=category)
    ProductImage.objects.create(
        product=pending, image=ContentFile(photo("red", "square", 1), "p.jpg")
    )
    labels = {**catalog, "pending": label_row("red", "square")}

    report = quality.evaluate(Product.objects.order_by("pk"), labels, k=5, progress=False)

    assert report["encoder"] == get_encoder().model_id
    assert (report["products"], report["ready_products"], report["searchable_products"]) == (
        25,
        24,
        24,
    )
    assert report["labels"] == {"articleType": 8, "subCategory": 2, "masterCategory": 1}
    assert "mAP@k" in report["notes"]["map_at_k"]
    scope = report["scopes"]["catalog"]
    assert scope["queries"] == 24
    assert all(0.0 <= value <= 1.0 for value in metric_values(scope))
    assert set(scope["precision_at_k"]) == {"articleType", "subCategory", "masterCategory"}
    assert scope["precision_at_k"]["masterCategory"] == 1.0  # every other product is a Toy
    assert scope["self_match"] == 1.0
    assert scope["self_match_strictly_first"] == 1.0
    assert scope["recall_at_k_hnsw_vs_exact"] == 1.0
    assert scope["chance_precision_at_k"]["articleType"] == pytest.approx(2 / 23, abs=1e-4)
    assert scope["chance_precision_at_k"]["subCategory"] == pytest.approx(11 / 23, abs=1e-4)
    assert scope["map_queries"] == 24
    assert scope["short_result_lists"] == 0
    assert 0 < scope["latency_ms"]["p50"] <= scope["latency_ms"]["p95"]


def test_precision_and_map_follow_the_labels(catalog):
    products = Product.objects.order_by("pk")
    same = {eid: {"articleType": "all", "subCategory": "all"} for eid in catalog}
    scope = quality.evaluate(products, same, k=5, progress=False)["scopes"]["catalog"]
    assert scope["precision_at_k"] == {"articleType": 1.0, "subCategory": 1.0}
    assert scope["map_at_k"] == {"articleType": 1.0}
    assert scope["chance_precision_at_k"]["articleType"] == 1.0

    # More results wanted than exist: the missing ones count as misses.
    scope = quality.evaluate(products, same, k=30, progress=False)["scopes"]["catalog"]
    assert scope["precision_at_k"]["articleType"] == pytest.approx(23 / 30, abs=1e-4)
    assert scope["map_at_k"]["articleType"] == 1.0  # normalised by min(k, 23 others)
    assert scope["short_result_lists"] == 24

    unique = {eid: {"articleType": eid, "subCategory": eid} for eid in catalog}
    scope = quality.evaluate(products, unique, k=5, progress=False)["scopes"]["catalog"]
    assert scope["precision_at_k"]["articleType"] == 0.0
    assert scope["map_at_k"]["articleType"] is None  # no query has another relevant product
    assert scope["map_queries"] == 0


def test_holdout_queries_against_catalog_and_against_held_out_only(catalog):
    held = {eid for eid in catalog if eid.startswith(("red", "blue"))}
    labels = {
        eid: {"articleType": "held" if eid in held else "rest", "subCategory": row["subCategory"]}
        for eid, row in catalog.items()
    }
    report = quality.evaluate(
        Product.objects.order_by("pk"), labels, k=5, holdout=held, progress=False
    )

    assert report["held_out_products"] == 12
    assert set(report["scopes"]) == {"heldout_vs_catalog", "heldout_vs_heldout"}
    full, inner = report["scopes"]["heldout_vs_catalog"], report["scopes"]["heldout_vs_heldout"]
    assert full["queries"] == inner["queries"] == 12
    assert (full["searchable_products"], inner["searchable_products"]) == (24, 12)
    # Only held-out products come back when the catalog is restricted to them.
    assert inner["precision_at_k"]["articleType"] == 1.0
    assert inner["chance_precision_at_k"]["articleType"] == 1.0
    assert full["chance_precision_at_k"]["articleType"] == pytest.approx(11 / 23, abs=1e-4)
    for scope in (full, inner):
        assert all(0.0 <= value <= 1.0 for value in metric_values(scope))
        assert scope["self_match"] == 1.0
        assert scope["recall_at_k_hnsw_vs_exact"] == 1.0


def test_evaluate_follows_the_active_encoder(catalog, settings):
    """Reusable after switching encoders: only vectors of the active model are queries."""
    from visualsearch.models import EncoderGeneration

    EncoderGeneration.objects.all().delete()  # no generation to keep serving: the new one is
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER_OPTIONS": {"model": "another-clip", "dimensions": 32},
    }
    report = quality.evaluate(Product.objects.all(), catalog, k=5, progress=False)
    assert report["encoder"] == "clip:another-clip"
    assert (report["products"], report["ready_products"]) == (24, 0)
    scope = report["scopes"]["catalog"]
    assert scope["queries"] == 0 and scope["precision_at_k"]["articleType"] is None
    assert "precision@5 articleType" in quality.format_table(report)


def test_is_held_out_is_deterministic_and_matches_the_fraction():
    ids = [str(10000 + i) for i in range(10_000)]
    held = [eid for eid in ids if quality.is_held_out(eid, 0.2, 0)]
    assert held == [eid for eid in ids if quality.is_held_out(eid, 0.2, 0)]
    assert 0.18 < len(held) / len(ids) < 0.22
    other_seed = {eid for eid in ids if quality.is_held_out(eid, 0.2, 1)}
    assert other_seed != set(held)
    assert not any(quality.is_held_out(eid, 0.0, 0) for eid in ids)
    # Pinned: training code uses the same rule and must split the same way.
    assert quality.is_held_out("10002", 0.2, 0) and not quality.is_held_out("10000", 0.2, 0)


def test_average_precision():
    assert quality.average_precision([True, False, True], 3, 2) == pytest.approx((1 + 2 / 3) / 2)
    assert quality.average_precision([True, False, True], 3, 5) == pytest.approx((1 + 2 / 3) / 3)
    assert quality.average_precision([False, False], 2, 4) == 0.0
    with pytest.raises(ValueError):
        quality.average_precision([True], 1, 0)


def write_catalog(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A products.csv in the shared data's format with Pillow-made photos beside it."""
    (folder / "images").mkdir(parents=True)
    path = folder / "products.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["id", "file", "gender", "masterCategory", "subCategory", "articleType"]
            + ["baseColour", "season", "year", "usage", "productDisplayName"]
        )
        for n, (color, shape, sub) in enumerate(rows):
            (folder / "images" / f"{n}.jpg").write_bytes(photo(color, shape, n % VARIANTS))
            writer.writerow(
                [str(n), f"images/{n}.jpg", "Unisex", "Toys", sub, f"{color} {shape}"]
                + [color, "Summer", "2012", "Casual", f"{color} {shape} {n}"]
            )
    return path


def test_load_labels(tmp_path):
    path = write_catalog(tmp_path, [("red", "square", "Blocks"), ("blue", "circle", "")])
    assert quality.load_labels(path) == {
        "0": {"articleType": "red square", "subCategory": "Blocks", "masterCategory": "Toys"},
        "1": {"articleType": "blue circle", "subCategory": None, "masterCategory": "Toys"},
    }
    assert list(quality.load_labels(path, limit=1)) == ["0"]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,file,articleType\n1,a.jpg,Shirts\n")
    with pytest.raises(ValueError, match="subCategory"):
        quality.load_labels(bad)


def test_default_database_name_is_per_csv_and_encoder(tmp_path):
    name = quality.default_database(tmp_path / "fashion-products" / "products.csv", "clip")
    assert name.startswith("quality_fashion_products_products_") and name.endswith("_clip")
    assert len(name) <= 63
    other = quality.default_database(tmp_path / "other" / "products.csv", "clip")
    assert other != name
    assert quality.default_database(tmp_path / "x.csv", "efficientnet", 50).endswith("_n50")


@pytest.mark.slow
def test_command_line_imports_embeds_and_reports(transactional_db, tmp_path):
    rows = [(c, s, "Round" if s == "circle" else "Boxy") for c in COLORS for s in SHAPES] * 2
    path = write_catalog(tmp_path / "catalog", rows)
    output = tmp_path / "report.json"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "DATABASE_URL": database_url(),  # the test database, flushed after the test
        "MEDIA_ROOT": str(tmp_path / "media"),
        "VISUALSEARCH_CLIP_MODEL": str(settings.TINY_CLIP_DIR),
        "VISUALSEARCH_ENCODER_THREADS": "1",
    }
    command = [sys.executable, str(BASE_DIR / "bench" / "quality.py"), str(path)]
    command += ["--encoder", "clip", "--k", "3", "--output", str(output)]

    def run(*extra: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            command + list(extra), env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    done = run("--fusion", "off")  # the image vectors alone
    assert "DATABASE_URL is set" in done.stdout
    assert "16 image(s) to embed" in done.stdout
    assert "precision@3 articleType" in done.stdout and "mAP@3 articleType" in done.stdout
    report = json.loads(output.read_text())
    assert report["catalog"] == str(path.resolve())
    assert (report["products"], report["ready_products"]) == (16, 16)
    scope = report["scopes"]["catalog"]
    assert scope["self_match"] == 1.0 and scope["recall_at_k_hnsw_vs_exact"] == 1.0
    assert set(report["timings"]) == {"migrate_s", "import_s", "reindex_s", "evaluate_s"}
    assert Product.objects.count() == 16

    done = run("--holdout-only", "0.5", "--seed", "0")  # the re-run reuses the rows
    assert "Images: 0 added, 16 unchanged" in done.stdout
    assert "0 image(s) to embed" in done.stdout
    report = json.loads(output.read_text())
    assert set(report["scopes"]) == {"heldout_vs_catalog", "heldout_vs_heldout"}
    held = sum(quality.is_held_out(str(n), 0.5, 0) for n in range(16))
    assert report["held_out_products"] == report["scopes"]["heldout_vs_heldout"]["queries"] == held
    assert Product.objects.count() == 16

    done = run("--photo-queries", "5")  # the default: fused vectors beside the image vectors
    assert "16 fused vector(s) to build" in done.stdout, done.stdout
    report = json.loads(output.read_text())
    assert set(report["scopes"]) == {"image_only", "fused"}
    assert report["scopes"]["image_only"]["queries"] == report["scopes"]["fused"]["queries"] == 16
    fusion = report["fusion"]
    assert fusion["recipe"] == {"image": 0.5, "name": 0.5} and fusion["uses_label_columns"] is False
    assert fusion["products_with_fused_vector"] == 16 and fusion["dimensions"] == 32 + 384
    assert [row["image_weight"] for row in fusion["weight_sweep_exact"]][:2] == [1.0, 0.9]
    assert fusion["photo_search"]["queries"] == 5

    done = run("--holdout-only", "0.5", "--seed", "0", "--adapt")  # train, switch, evaluate
    assert "Held-out precision@10 by category" in done.stdout
    # Derived from the stored base vectors: the switch encodes nothing.
    assert "(16 of 16 image(s) derived from stored vectors)" in done.stdout
    assert "serves now" in done.stdout
    report = json.loads(output.read_text())
    assert "+adapted:" in report["encoder"]
    assert report["before_adaptation"]["encoder"] == report["adaptation"]["base_model"]
    assert set(report["scopes"]) == {"heldout_vs_catalog", "heldout_vs_heldout"}
