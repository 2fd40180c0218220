"""Real services for the test session: a private Redis server and the tiny CLIP model.

Both are prepared when ``tests.settings`` is imported (pytest-django imports settings before
conftest fixtures run) and handed to child processes (the Celery worker) through the
environment, so a worker started by a test uses the same broker, database and model.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A throw-away ``redis-server`` on a free loopback port (no persistence)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="vs-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server).")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def session_broker_url() -> str:
    """The broker for this test session; starts a private Redis in the first process."""
    url = os.environ.get("VISUALSEARCH_TEST_BROKER_URL")
    if url:
        return url
    server = RedisServer().start()
    atexit.register(server.stop)
    os.environ["VISUALSEARCH_TEST_BROKER_URL"] = server.url
    return server.url


def tiny_clip_dir() -> Path:
    """A tiny random CLIP in sentence-transformers' format, built once and reused."""
    path = Path(os.environ.get("VISUALSEARCH_TEST_CLIP_DIR", BASE_DIR / ".cache" / "tiny-clip-32"))
    if not (path / "modules.json").exists():
        from tests.tiny_clip import build_tiny_clip

        tmp = Path(
            tempfile.mkdtemp(prefix="tiny-clip-", dir=path.parent if path.parent.exists() else None)
        )
        build_tiny_clip(tmp, projection_dim=32, image_size=32)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(path)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    os.environ["VISUALSEARCH_TEST_CLIP_DIR"] = str(path)
    return path


def session_media_root() -> Path:
    """A media folder for this session, shared with worker processes."""
    path = os.environ.get("VISUALSEARCH_TEST_MEDIA_ROOT")
    if not path:
        path = tempfile.mkdtemp(prefix="vs-media-")
        atexit.register(shutil.rmtree, path, True)
        os.environ["VISUALSEARCH_TEST_MEDIA_ROOT"] = path
    return Path(path)


def database_url(settings_dict: dict) -> str:
    """A ``postgresql://`` URL for a ``DATABASES`` entry (the test database, for a worker)."""
    db = settings_dict
    host = db["HOST"]
    if host.startswith("/"):
        return f"postgresql://{db['USER']}:{db['PASSWORD']}@/{db['NAME']}?host={host}"
    return f"postgresql://{db['USER']}:{db['PASSWORD']}@{host}:{db['PORT']}/{db['NAME']}"


def start_worker(
    app: str, settings_module: str, db_url: str, log: Path, *, cwd: Path, name: str, timeout: float
) -> subprocess.Popen:
    """A real ``celery -A app worker`` process (one pool process) on the database ``db_url``,
    returned once it consumes and its pool process has loaded the encoder; ``log`` gets its
    output. Raises ``RuntimeError`` with the log's tail when it does not start in ``timeout``."""
    import sys

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings_module,
        "DATABASE_URL": db_url,
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel=info"]
    command += ["--concurrency=1", "--without-heartbeat", "--without-gossip", "--without-mingle"]
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [*command, "-n", f"{name}-{os.getpid()}@%h"],
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while not ("ready." in (text := log.read_text()) and "loaded" in text):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"celery worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    process.log = log
    return process


def stop_worker(process: subprocess.Popen) -> None:
    """Terminate a worker from :func:`start_worker` (killed after 20 s)."""
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
