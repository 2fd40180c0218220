# syntax=docker/dockerfile:1
# One image for the demo shop's web (gunicorn), worker and beat (Celery) containers; see
# docker-compose.yml. Build: `docker compose build`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    VISUALSEARCH_CACHE_DIR=/cache/visualsearch \
    MEDIA_ROOT=/app/media \
    STATIC_ROOT=/app/staticfiles

WORKDIR /app

# A writable home for the app user (gunicorn's control socket, library caches).
RUN groupadd --system --gid 1000 app \
    && useradd --system --uid 1000 --gid app --create-home --home-dir /home/app \
       --shell /usr/sbin/nologin app

# torch first, from PyTorch's CPU index: the PyPI wheel pulls several GB of CUDA libraries.
# The pin is the one in pyproject.toml's `clip` extra, so the install below keeps this build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# The package and its dependencies, in their own layer (rebuilt only when they change).
COPY pyproject.toml README.md* ./
COPY visualsearch ./visualsearch
RUN pip install ".[drf,clip,shop]" gunicorn==27.0.1 \
    && python -c "import torch; assert torch.version.cuda is None, torch.__version__" \
    && if pip show --quiet torchvision 2>/dev/null; then echo "torchvision crept in" >&2; exit 1; fi

# The demo project (shop/, templates/, manage.py). Source stays root-owned and read-only to
# the app user; only uploads and model caches are writable (named volumes are created from
# these directories, ownership included).
COPY . .
RUN DJANGO_DEBUG=1 DATABASE_URL=postgres://build@localhost/build python manage.py collectstatic --noinput \
    && mkdir -p /app/media /cache/huggingface /cache/visualsearch \
    && chown -R app:app /app/media /cache

USER app
EXPOSE 8000
CMD ["gunicorn", "shop.wsgi:application", "--bind", "0.0.0.0:8000"]
