"""Security settings and access rules of the demo shop.

``manage.py check --deploy`` is clean with production settings from the environment; the
search form needs its CSRF token; the admin's pages, actions and maintenance views are for
staff with the right permission only; ``demo_setup`` (admin / admin) refuses production.
Upload caps, the API throttle and the import's URL and path rules have their own modules:
test_hostile_inputs.py, test_api.py (throttle), test_import_security.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from shop.catalog.models import ProductImage
from tests.conftest import BASE_DIR, make_image_bytes, queued_tasks
from tests.infra.test_docker_compose import environment, interpolate
from visualsearch.ingest.pipeline import embed_images
from visualsearch.models import EmbeddingStatus

SECURE_SETTINGS = [
    "DEBUG",
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
]


def production_env(**extra: str) -> dict[str, str]:
    """The process environment of a production run: DEBUG off, a real key, a host name."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "VISUALSEARCH_TEST")) and key != "DATABASE_URL"
    }
    env.update(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="shop.example.com",
        # Only the deploy checks run (no --database): nothing connects to this.
        DATABASE_URL="postgres://shop:secret@db.invalid:5432/shop",
    )
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def settings_under(env: dict[str, str]) -> dict:
    """The secure settings as ``shop.settings`` computes them in ``env``."""
    code = (
        "import json; from shop import settings as s; "
        f"print(json.dumps({{k: getattr(s, k, None) for k in {SECURE_SETTINGS!r}}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- deployment settings --------------------------------------------------------------------


def test_check_deploy_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_debug_off_turns_every_https_setting_on():
    values = settings_under(production_env())
    assert values == {
        "DEBUG": False,
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_PROXY_SSL_HEADER": None,  # only behind a proxy that sets it
    }


def test_each_https_setting_can_be_set_from_the_environment():
    values = settings_under(
        production_env(
            DJANGO_SECURE_SSL_REDIRECT="0",
            DJANGO_SESSION_COOKIE_SECURE="0",
            DJANGO_CSRF_COOKIE_SECURE="0",
            DJANGO_SECURE_HSTS_SECONDS="3600",
            DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS="0",
            DJANGO_SECURE_HSTS_PRELOAD="0",
            DJANGO_SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        )
    )
    assert values == {
        "DEBUG": False,
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 3600,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
    }


def test_the_api_throttle_rate_can_be_set_from_the_environment():
    code = "from shop import settings as s; print(s.VISUALSEARCH.get('API_THROTTLE_RATE'))"

    def rate(env: dict[str, str]) -> str:
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert rate(production_env()) == "None"  # visualsearch's default, 120/minute
    assert rate(production_env(VISUALSEARCH_API_THROTTLE_RATE="5/second")) == "5/second"


def test_development_defaults_stay_on_plain_http():
    env = production_env(DJANGO_DEBUG="1")
    values = settings_under(env)
    assert values["DEBUG"] is True
    assert not any(values[key] for key in SECURE_SETTINGS if key != "DEBUG")


def test_docker_compose_http_demo_keeps_its_healthcheck_working():
    """compose serves http://localhost:8000 with DEBUG off: no redirect to https, no HSTS,
    cookies usable over http (so the admin login works), and still DEBUG off."""
    env = {key: interpolate(value) for key, value in environment("web").items()}
    env = production_env(**{k: v for k, v in env.items() if k.startswith("DJANGO_")})
    values = settings_under(env)
    assert values["DEBUG"] is False
    assert values["SECURE_SSL_REDIRECT"] is False
    assert values["SECURE_HSTS_SECONDS"] == 0
    assert values["SESSION_COOKIE_SECURE"] is False and values["CSRF_COOKIE_SECURE"] is False


def test_production_refuses_to_start_without_a_secret_key():
    result = manage("check", env=production_env(DJANGO_SECRET_KEY=""))
    assert result.returncode != 0
    assert "Set DJANGO_SECRET_KEY when DJANGO_DEBUG is off." in result.stderr


def test_no_secret_is_written_in_the_settings():
    """The only literal key is the development one, used with DEBUG on only."""
    source = (BASE_DIR / "shop" / "settings.py").read_text()
    literals = re.findall(r"(?:SECRET|PASSWORD|TOKEN)\w*\s*=\s*[\"']([^\"']+)[\"']", source)
    assert literals == ["dev-only-insecure-key-do-not-use-in-production"]


# --- CSRF on the search form -----------------------------------------------------------------


@pytest.mark.django_db
def test_search_form_needs_its_csrf_token(make_product):
    make_product(color="red")
    client = Client(enforce_csrf_checks=True)
    photo = make_image_bytes("red")

    refused = client.post("/search/", {"image": SimpleUploadedFile("p.jpg", photo), "q": ""})
    assert refused.status_code == 403

    page = client.get("/search/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token and "csrftoken" in client.cookies
    accepted = client.post(
        "/search/",
        {"image": SimpleUploadedFile("p.jpg", photo), "csrfmiddlewaretoken": token.group(1)},
    )
    assert accepted.status_code == 200
    assert 'data-testid="search-results"' in accepted.content.decode()


@pytest.mark.django_db
def test_admin_search_by_image_needs_its_csrf_token(admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    url = reverse("admin:visualsearch_search")
    photo = SimpleUploadedFile("p.jpg", make_image_bytes("red"))
    assert client.post(url, {"image": photo, "limit": 3}).status_code == 403


# --- the admin: staff with permission only ----------------------------------------------------

IMAGES = "/admin/catalog/productimage/"
ADMIN_PAGES = [
    IMAGES,
    IMAGES + "add/",
    "/admin/catalog/product/",
    "/admin/visualsearch/visualsearch/",  # status overview
    "/admin/visualsearch/visualsearch/search/",  # search by image
]


@pytest.fixture
def image_rows(make_product):
    product = make_product(color="red", images=2)
    embed_images(product.images.values_list("pk", flat=True))
    return list(product.images.values_list("pk", flat=True))


def action(client: Client, name: str, pks: list) -> object:
    return client.post(IMAGES, {"action": name, "_selected_action": pks}, follow=True)


@pytest.mark.django_db
@pytest.mark.parametrize("url", ADMIN_PAGES)
def test_anonymous_and_customers_are_sent_to_the_login(client, django_user_model, url):
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    customer = django_user_model.objects.create_user("customer", password="x")
    client.force_login(customer)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
@pytest.mark.parametrize("url", ADMIN_PAGES)
def test_staff_without_permission_get_403(client, django_user_model, url):
    staff = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get(url).status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["reembed_selected", "mark_stale_selected"])
def test_actions_are_refused_without_change_permission(
    client, django_user_model, image_rows, broker, name
):
    """A customer, a staff member without permissions and a viewer change nothing."""
    customer = django_user_model.objects.create_user("customer", password="x")
    client.force_login(customer)
    assert action(client, name, image_rows).redirect_chain[0][0].startswith("/admin/login/")

    staff = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    client.force_login(staff)
    response = client.post(IMAGES, {"action": name, "_selected_action": image_rows})
    assert response.status_code == 403

    staff.user_permissions.add(Permission.objects.get(codename="view_productimage"))
    client.force_login(staff)
    response = action(client, name, image_rows)
    assert response.status_code == 200  # the list, without the action: nothing was done
    assert name not in response.content.decode()

    statuses = set(ProductImage.objects.values_list("embedding_status", flat=True))
    assert statuses == {EmbeddingStatus.READY}
    assert queued_tasks(broker) == []


@pytest.mark.django_db
def test_actions_work_with_change_permission(client, django_user_model, image_rows, broker):
    editor = django_user_model.objects.create_user("editor", password="x", is_staff=True)
    for codename in ("view_productimage", "change_productimage"):
        editor.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(editor)
    response = action(client, "mark_stale_selected", image_rows)
    assert "Marked 2 image(s) stale" in response.content.decode()
    assert set(ProductImage.objects.values_list("embedding_status", flat=True)) == {"stale"}


# --- demo_setup ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_demo_setup_refuses_to_run_with_debug_off(settings, django_user_model, make_product):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG is off"):
        call_command("demo_setup", stdout=StringIO(), stderr=StringIO())
    assert not django_user_model.objects.exists()

    make_product()  # a catalog already there: the forced run only adds the user
    out = StringIO()
    call_command("demo_setup", "--allow-production", "--no-embed", stdout=out, stderr=StringIO())
    assert "Created superuser admin / admin" in out.getvalue()
    assert django_user_model.objects.filter(username="admin", is_superuser=True).exists()
