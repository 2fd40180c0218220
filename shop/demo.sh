#!/usr/bin/env bash
# `make demo`: embedded Postgres, migrations, demo catalog, embeddings (images, and product
# texts for text search), a Celery worker (with the periodic sweep) and the development
# server at http://HOST:PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${1:-127.0.0.1}
PORT=${2:-8000}
PY=.venv/bin/python
# The development settings (shop/settings.py runs with DEBUG off unless asked).
export DJANGO_DEBUG="${DJANGO_DEBUG:-1}"
BROKER=${CELERY_BROKER_URL:-${REDIS_URL:-redis://127.0.0.1:6379/0}}

if ! $PY -c "import redis, sys; redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()" "$BROKER" 2>/dev/null; then
  if [[ "$BROKER" == redis://127.0.0.1:6379* ]] && command -v redis-server >/dev/null; then
    echo "Starting a local Redis on 127.0.0.1:6379"
    mkdir -p .demo
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir "$PWD/.demo" --logfile "$PWD/.demo/redis.log"
    sleep 0.5
  else
    echo "Redis at $BROKER is not reachable; start it or set CELERY_BROKER_URL." >&2
    exit 1
  fi
fi

$PY manage.py migrate --noinput
$PY manage.py demo_setup

mkdir -p .demo
$PY -m celery -A shop worker --beat --loglevel=info --concurrency=1 \
  --schedule "$PWD/.demo/celerybeat-schedule" >.demo/worker.log 2>&1 &
WORKER=$!
trap 'kill $WORKER 2>/dev/null; wait $WORKER 2>/dev/null' EXIT INT TERM
echo "Celery worker running (pid $WORKER, log .demo/worker.log)."
echo "Shop: http://$HOST:$PORT/   Search: http://$HOST:$PORT/search/   API docs: http://$HOST:$PORT/api/docs/"
echo "Admin: http://$HOST:$PORT/admin/ (admin / admin)"
$PY manage.py runserver "$HOST:$PORT" --noreload
