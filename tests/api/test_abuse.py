"""Abuse paths of the outside review (issue 19): one or more tests per finding.

Every test named in docs/reliability.md ("Abuse paths") failed on the code before its fix.
They go through the real Postgres, Redis cache and throttle, the test client, and child
processes where a measure is per process (memory) or a user must differ (file modes).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.template import Context, Template
from django.test.utils import CaptureQueriesContext
from PIL import Image
from rest_framework.test import APIClient

from shop.catalog.models import ProductImage
from tests.api import hostile_images
from tests.api.test_security import manage, production_env, settings_under
from tests.conftest import BASE_DIR, make_image_bytes
from tests.infra.test_docker_compose import environment, interpolate
from visualsearch.ingest.pipeline import embed_images
from visualsearch.models import EmbeddingStatus

pytestmark = pytest.mark.django_db

TEXT_URL = "/api/search/text/"
IMAGE_URL = "/api/search/image/"


@pytest.fixture(autouse=True)
def fresh_cache():
    """Throttle counters and cached widgets of earlier tests live in the session's Redis."""
    cache.clear()


def vary(settings, **values) -> None:
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, **values}


@pytest.fixture
def embedded(make_product):
    """Three embedded products of different colours."""
    products = [make_product(color=colour) for colour in ("red", "blue", "green")]
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    return products


def gif_html_polyglot() -> bytes:
    """A valid GIF whose comment block is an HTML page with a script."""
    out = io.BytesIO()
    Image.new("P", (8, 8), 1).save(out, "GIF")
    gif = out.getvalue()
    script = b"<html><body><script>alert(document.domain)</script></body></html>"
    pos = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)  # after the palette
    return gif[:pos] + b"\x21\xfe" + bytes([len(script)]) + script + b"\x00" + gif[pos:]


# --- 1. stored XSS through import file names ---------------------------------------------------


def test_import_names_files_after_their_decoded_format(tmp_path):
    from django.core.management import call_command

    (tmp_path / "x.html").write_bytes(gif_html_polyglot())
    (tmp_path / "products.csv").write_text("id,image,name\nP1,x.html,Polyglot\n")
    out, err = io.StringIO(), io.StringIO()
    call_command("import_catalog", str(tmp_path / "products.csv"), "--no-progress",
                 stdout=out, stderr=err)  # fmt: skip
    assert "Images: 1 added" in out.getvalue(), err.getvalue()
    name = ProductImage.objects.get().image.name
    assert name.endswith(".gif") and ".html" not in name


def test_uploaded_media_is_never_served_as_a_page(client, settings):
    media = Path(settings.MEDIA_ROOT) / "products"
    media.mkdir(parents=True, exist_ok=True)
    (media / "legacy.html").write_bytes(gif_html_polyglot())  # stored before the fix
    (media / "photo.jpg").write_bytes(make_image_bytes())
    page = client.get("/media/products/legacy.html")
    assert page.status_code == 200
    assert not page["Content-Type"].startswith("text/html")
    assert page["Content-Disposition"].startswith("attachment")
    assert page["X-Content-Type-Options"] == "nosniff"
    photo = client.get("/media/products/photo.jpg")
    assert photo["Content-Type"] == "image/jpeg"
    assert not photo["Content-Disposition"].startswith("attachment")
    assert photo["X-Content-Type-Options"] == "nosniff"


# --- 2. query-image amplification -----------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(hostile_images.HOSTILE))
def test_any_search_photo_costs_bounded_memory_and_cpu(name, hostile_dir):
    """Peak RSS over the baseline and CPU seconds of opening the worst files we can make,
    each in a child process, within the bounds of issue 19 (bench/hostile.py records them)."""
    path = hostile_dir / name
    path.write_bytes(hostile_images.HOSTILE[name]())
    cost = hostile_images.measure(path)
    assert cost["rss_mb"] <= 100 and cost["cpu_s"] <= 1.0, cost


def test_a_large_phone_photo_is_still_searchable(embedded):
    """A JPEG of more pixels than the decode cap is decoded at a reduced scale, not refused."""
    photo = hostile_images.jpeg((7700, 5100))
    response = APIClient().post(IMAGE_URL, {"image": SimpleUploadedFile("big.jpg", photo)})
    assert response.status_code == 200, response.content


# --- 3. throttle bypass -----------------------------------------------------------------------


def test_rotating_x_forwarded_for_does_not_escape_the_throttle(settings, embedded):
    vary(settings, API_THROTTLE_RATE="1/minute")
    client = APIClient()
    codes = [
        client.get(TEXT_URL, {"q": "red"}, HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code
        for i in range(5)
    ]
    assert codes == [200, 429, 429, 429, 429]


def test_num_proxies_counts_the_address_the_proxy_saw(settings, embedded):
    vary(settings, API_THROTTLE_RATE="1/minute")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    client = APIClient()

    def status(address: str) -> int:
        forwarded = f"198.51.100.7, {address}"  # what the client claimed, then the proxy's
        return client.get(TEXT_URL, {"q": "red"}, HTTP_X_FORWARDED_FOR=forwarded).status_code

    assert [status("203.0.113.1"), status("203.0.113.2"), status("203.0.113.1")] == [
        200,
        200,
        429,
    ]


def test_search_page_is_throttled_with_the_api_budget(client, settings, embedded):
    vary(settings, API_THROTTLE_RATE="1/minute")
    assert client.get("/search/").status_code == 200  # the empty form is not a search
    assert client.get("/search/", {"q": "red"}).status_code == 200
    refused = client.get("/search/", {"q": "blue"})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert APIClient().get(TEXT_URL, {"q": "red"}).status_code == 429  # one budget


# --- 4. temporary files per request -------------------------------------------------------------


def test_a_search_request_keeps_one_file(settings, embedded):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # every kept file goes to a temporary file
    photo = make_image_bytes()
    files = {"image": SimpleUploadedFile("p.jpg", photo)}
    files |= {f"extra{i}": SimpleUploadedFile(f"x{i}.jpg", photo) for i in range(5)}
    response = APIClient().post(IMAGE_URL, files)
    assert response.status_code == 400, response.content
    assert "one file" in response.json()["image"][0]


# --- 5. widget cache race -------------------------------------------------------------------------


def test_a_widget_rendered_while_the_data_changes_is_not_cached_as_current(embedded, monkeypatch):
    from visualsearch.templatetags import visualsearch as tags
    from visualsearch.web import cache as widget_cache

    product, gone = embedded[0], embedded[1]
    original = tags._render

    def render_then_change(*args, **kwargs):
        html = original(*args, **kwargs)  # read the old data ...
        gone.delete()  # ... and a change commits before the rendering is stored
        widget_cache.bump()
        return html

    template = Template("{% load visualsearch %}{% similar_products product limit=5 %}")
    monkeypatch.setattr(tags, "_render", render_then_change)
    first = template.render(Context({"product": product}))
    assert gone.get_absolute_url() in first
    monkeypatch.setattr(tags, "_render", original)
    second = template.render(Context({"product": product}))
    assert gone.get_absolute_url() not in second


# --- 6. overwriting storages --------------------------------------------------------------------


class OverwritingStorage(FileSystemStorage):
    """Keeps the name it is given, replacing the old file (django-storages' S3 default)."""

    def get_available_name(self, name, max_length=None):
        if self.exists(name):
            self.delete(name)
        return name


def test_a_file_uploaded_again_under_the_same_name_is_embedded_again(settings, make_product):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": f"{__name__}.OverwritingStorage"},
    }
    product = make_product(images=0)
    row = ProductImage.objects.create(
        product=product, image=ContentFile(make_image_bytes("red"), "shirt.jpg")
    )
    embed_images([row.pk])
    row.refresh_from_db()
    old_name, old_vector = row.image.name, np.array(row.embedding)

    row = ProductImage.objects.get(pk=row.pk)
    row.image = ContentFile(make_image_bytes("blue", "circle"), "shirt.jpg")
    row.save()
    assert row.image.name == old_name  # the storage kept the name
    row.refresh_from_db()
    assert row.embedding_status == EmbeddingStatus.PENDING
    embed_images([row.pk])
    row.refresh_from_db()
    assert row.embedding_status == EmbeddingStatus.READY
    assert not np.allclose(np.array(row.embedding), old_vector)

    unchanged = ProductImage.objects.get(pk=row.pk)
    unchanged.save()  # no new file: nothing to do
    unchanged.refresh_from_db()
    assert unchanged.embedding_status == EmbeddingStatus.READY


# --- 7. session settings leak -----------------------------------------------------------------


def settings_now(*names: str) -> dict[str, str]:
    with connection.cursor() as cursor:
        values = {}
        for name in names:
            cursor.execute("SELECT current_setting(%s, true)", [name])
            values[name] = cursor.fetchone()[0]
        return values


GUCS = ("hnsw.ef_search", "hnsw.iterative_scan", "plan_cache_mode", "enable_sort")


def test_query_settings_end_with_the_query_inside_a_transaction(embedded):
    """The test runs inside a transaction, as a view does under ATOMIC_REQUESTS."""
    from visualsearch.query import knn, similar_products

    assert connection.in_atomic_block
    before = settings_now(*GUCS)
    assert similar_products(embedded[0], 2)
    knn.run("SELECT 1, 0.5", (), "default", 5, partial=True)
    assert settings_now(*GUCS) == before


def test_query_settings_apply_to_the_query_itself(embedded):
    from visualsearch.query import knn

    rows = knn.run("SELECT 1, current_setting('enable_sort')", (), "default", 5, partial=True)
    assert rows == [(1, "off")]


# --- 8. anonymous home page cost ----------------------------------------------------------------


def test_a_cookieless_home_page_visit_saves_no_session(client, embedded):
    page = client.get("/")
    assert page.status_code == 200 and 'data-testid="recommended-products"' in page.content.decode()
    assert not Session.objects.exists() and "sessionid" not in page.cookies


@pytest.mark.parametrize("strategy", ["diverse", "random"])
def test_exploration_picks_never_sort_the_product_table_at_random(embedded, strategy):
    from visualsearch.query import recommend

    with CaptureQueriesContext(connection) as queries:
        picks = recommend.recommend([], 3, strategy=strategy)
    assert len(picks) == 3
    statements = " ".join(query["sql"].upper() for query in queries.captured_queries)
    assert "RANDOM()" not in statements


# --- 9. projection file modes -----------------------------------------------------------------


def projection() -> object:
    from visualsearch.encoders.projection import Projection

    rng = np.random.default_rng(0)
    return Projection(
        w1=rng.standard_normal((4, 3)).astype(np.float32),
        b1=np.zeros(3, np.float32),
        w2=rng.standard_normal((3, 2)).astype(np.float32),
        b2=np.zeros(2, np.float32),
    )


def test_a_saved_projection_is_readable_by_other_users(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = projection().save(tmp_path / "projection.npz")
    assert path.stat().st_mode & 0o777 == 0o644 & ~umask


#: Reads a projection file as the user ``nobody`` (the interpreter and its imports stay
#: root's: the warm-up reads a readable copy first), printing what it raised.
READ_AS_NOBODY = """
import os, pwd, sys
from visualsearch.encoders.projection import ProjectionFile
ProjectionFile(sys.argv[2]).get()
nobody = pwd.getpwnam("nobody")
os.setgid(nobody.pw_gid)
os.setuid(nobody.pw_uid)
try:
    ProjectionFile(sys.argv[1]).get()
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_an_unreadable_projection_is_a_clear_error(tmp_path):
    """Read by another user (the web process) than the one that wrote it, mode 0600."""
    folder = Path(tempfile.mkdtemp())  # outside pytest's folders, which only root may enter
    try:
        folder.chmod(0o755)
        path = projection().save(folder / "projection.npz")
        path.chmod(0o600)
        warm = projection().save(tmp_path / "warm.npz")
        result = subprocess.run(
            [sys.executable, "-c", READ_AS_NOBODY, str(path), str(warm)],
            cwd=BASE_DIR,
            capture_output=True,
            text=True,
        )
    finally:
        shutil.rmtree(folder)
    assert result.stdout.startswith("ImproperlyConfigured"), result.stdout + result.stderr
    assert str(path) in result.stdout


def test_a_broken_projection_does_not_take_the_home_page_down(client, settings, embedded, caplog):
    vary(
        settings,
        ENCODER="visualsearch.encoders.adapted.AdaptedEncoder",
        ENCODER_OPTIONS={
            "base": settings.VISUALSEARCH["ENCODER"],
            "base_options": settings.VISUALSEARCH["ENCODER_OPTIONS"],
            "projection": str(BASE_DIR),  # a folder: it cannot be read as a file
        },
    )
    page = client.get("/")
    assert page.status_code == 200
    assert str(BASE_DIR) in caplog.text


# --- 10. shop defaults ------------------------------------------------------------------------


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {key: value for key, value in env.items() if key not in names}


def test_debug_is_off_unless_asked():
    assert settings_under(without(production_env(), "DJANGO_DEBUG"))["DEBUG"] is False


def test_no_known_key_without_debug():
    result = manage("check", env=without(production_env(), "DJANGO_DEBUG", "DJANGO_SECRET_KEY"))
    assert result.returncode != 0
    assert "Set DJANGO_SECRET_KEY" in result.stderr


def test_localhost_is_not_an_allowed_host_without_debug():
    code = "from shop import settings as s; print(json.dumps(s.ALLOWED_HOSTS))"
    result = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        cwd=BASE_DIR,
        env=without(production_env(), "DJANGO_ALLOWED_HOSTS"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    hosts = json.loads(result.stdout)
    assert not {"localhost", "127.0.0.1", "testserver", "*"} & set(hosts)


def test_check_deploy_is_clean_in_the_compose_stack():
    env = {key: interpolate(value) for key, value in environment("web").items()}
    ours = {k: v for k, v in env.items() if k.startswith("DJANGO_") and k != "DJANGO_SECRET_KEY"}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(**ours))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
