"""``import_catalog`` cannot be turned against the shop: no SSRF, no path traversal, no hang.

URLs go to public addresses only (every address a name resolves to, on every redirect, and
the connection goes to the address checked), redirects are few and http(s) only, size and
time are capped however the server behaves; local paths stay inside the CSV's folder or a
``--root``. A real HTTP server on 127.0.0.1 plays the web; where a test needs it to count as
public, ``address_problem`` is told so, and everything else is still checked for real.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from shop.catalog import downloads
from shop.catalog.downloads import TooLarge, address_problem, download
from shop.catalog.models import Product, ProductImage
from tests.conftest import make_image_bytes

PHOTO = make_image_bytes("purple")


class Handler(BaseHTTPRequestHandler):
    """``/photo.jpg``; ``/to?url=…`` redirects there; ``/loop``; slow and oversized answers."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        path, _, query = self.path.partition("?")
        if path == "/photo.jpg":
            self.send(200, PHOTO)
        elif path == "/to":
            self.send_response(302)
            self.send_header("Location", query.removeprefix("url="))
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif path == "/announces-too-much":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(PHOTO)
        elif path == "/endless":  # no length, never stops
            self.send_response(200)
            self.end_headers()
            self.stream(lambda: b"x" * 65536, pause=0)
        elif path == "/trickle-body":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.stream(lambda: b"x", pause=0.05)
        elif path == "/trickle-headers":
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
            self.stream(lambda: b"a", pause=0.05)
        else:
            self.send(404, b"not here")

    def send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def stream(self, chunk, pause: float, limit: float = 10.0) -> None:
        """Write ``chunk()`` every ``pause`` seconds until the client leaves (or ``limit``)."""
        stop = time.monotonic() + limit
        try:
            while time.monotonic() < stop:
                self.wfile.write(chunk())
                self.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server():
    """A real HTTP server on 127.0.0.1; yields its base URL (``.hits``: paths requested)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.hits = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def loopback_is_public(monkeypatch):
    """Let the test server (127.0.0.1, exactly) stand in for a public web server."""
    real = downloads.address_problem
    monkeypatch.setattr(
        downloads, "address_problem", lambda ip: None if ip == "127.0.0.1" else real(ip)
    )


def run_import(csv_path: Path, *args: str) -> tuple[str, str]:
    stdout, stderr = StringIO(), StringIO()
    call_command(
        "import_catalog", str(csv_path), "--no-progress", *args, stdout=stdout, stderr=stderr
    )
    return stdout.getvalue(), stderr.getvalue()


def one_row_csv(folder: Path, source: str) -> Path:
    path = folder / "products.csv"
    path.write_text(f"id,image,name\nP1,{source},Thing\n")
    return path


# --- which addresses are public -------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata services
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("2002:7f00:1::1", "loopback"),  # 6to4 around 127.0.0.1
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_problem(address, problem):
    assert address_problem(address) == problem


# --- private targets are refused, and the setting allows them -----------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "2130706433"])
def test_loopback_urls_are_refused(tmp_path, server, host, settings):
    settings.IMPORT_ALLOW_PRIVATE_URLS = False
    port = server.server_address[1]
    _, stderr = run_import(one_row_csv(tmp_path, f"http://{host}:{port}/photo.jpg"))
    assert "row 2: cannot fetch" in stderr and "a loopback address" in stderr, stderr
    assert "IMPORT_ALLOW_PRIVATE_URLS is off" in stderr
    assert server.hits == []  # refused before connecting
    assert not Product.objects.exists()


@pytest.mark.django_db
def test_the_setting_allows_private_urls(tmp_path, server, settings):
    settings.IMPORT_ALLOW_PRIVATE_URLS = True
    stdout, stderr = run_import(one_row_csv(tmp_path, f"{server.base}/photo.jpg"))
    assert "Images: 1 added" in stdout, stderr
    assert ProductImage.objects.get().source == f"{server.base}/photo.jpg"


def test_the_setting_comes_from_the_environment():
    import subprocess
    import sys

    code = "from shop import settings; print(settings.IMPORT_ALLOW_PRIVATE_URLS)"
    base = {**os.environ, "DATABASE_URL": "postgres://u:p@127.0.0.1:1/x"}
    for value, expected in [(None, "False"), ("1", "True"), ("0", "False")]:
        env = {k: v for k, v in base.items() if k != "IMPORT_ALLOW_PRIVATE_URLS"}
        if value is not None:
            env["IMPORT_ALLOW_PRIVATE_URLS"] = value
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert result.stdout.strip() == expected, result.stderr


# --- redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1/photo.jpg", "10.0.0.1 is a private address"),
        ("http://[::1]/photo.jpg", "::1 is a loopback address"),
        ("http://127.0.0.2/photo.jpg", "127.0.0.2 is a loopback address"),
    ],
)
def test_every_redirect_target_is_checked(server, loopback_is_public, target, message):
    with pytest.raises(OSError, match=message):
        download(f"{server.base}/to?url={target}", timeout=5, max_bytes=10**6)
    assert server.hits == [f"/to?url={target}"]


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://x/"])
def test_redirects_to_other_schemes_are_refused(server, loopback_is_public, target):
    # Refused by our handler, or before it by urllib's own (which knows only http, https, ftp).
    target_re = re.escape(target)
    refused = rf"redirect to {target_re} refused|Redirection to url '{target_re}' is not allowed"
    with pytest.raises(OSError, match=refused):
        download(f"{server.base}/to?url={target}", timeout=5, max_bytes=10**6)


def test_redirects_are_followed_a_few_times_only(server, loopback_is_public):
    photo = f"{server.base}/photo.jpg"
    assert download(f"{server.base}/to?url={photo}", timeout=5, max_bytes=10**6) == PHOTO
    with pytest.raises(OSError, match="redirect"):
        download(f"{server.base}/loop", timeout=5, max_bytes=10**6)
    assert 1 < server.hits.count("/loop") <= downloads.MAX_REDIRECTS + 1


def test_proxies_from_the_environment_are_not_used(server, loopback_is_public, monkeypatch):
    """A proxy would resolve and connect on its own, beyond the address check."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://10.255.255.1:3128")
    assert download(f"{server.base}/photo.jpg", timeout=5, max_bytes=10**6) == PHOTO
    assert server.hits == ["/photo.jpg"]


def test_non_http_urls_never_reach_the_network():
    with pytest.raises(ValueError, match="not an http"):
        download("file:///etc/passwd", timeout=1, max_bytes=100)


# --- DNS: every address checked, the connection goes to the one checked ------------------------


def fake_resolver(monkeypatch, answers: dict[str, list[list[str]]]):
    """``socket.getaddrinfo`` answering ``host`` with the next list of ``answers[host]``."""
    real = socket.getaddrinfo
    calls = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        calls.append(host)
        addresses = answers[host].pop(0) if len(answers[host]) > 1 else answers[host][0]
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_a_name_with_any_private_address_is_refused(server, loopback_is_public, monkeypatch):
    fake_resolver(monkeypatch, {"mixed.test": [["127.0.0.1", "10.0.0.7"]]})
    port = server.server_address[1]
    with pytest.raises(OSError, match=r"mixed.test is 10.0.0.7, a private address"):
        download(f"http://mixed.test:{port}/photo.jpg", timeout=5, max_bytes=10**6)
    assert server.hits == []


def test_dns_rebinding_gains_nothing(server, loopback_is_public, monkeypatch):
    """The name is resolved once per connection, and the checked address is the one used."""
    calls = fake_resolver(monkeypatch, {"rebind.test": [["127.0.0.1"], ["10.0.0.7"]]})
    port = server.server_address[1]
    assert download(f"http://rebind.test:{port}/photo.jpg", timeout=5, max_bytes=10**6) == PHOTO
    assert calls == ["rebind.test"] and server.hits == ["/photo.jpg"]


# --- size and time ------------------------------------------------------------------------------


def test_an_announced_oversize_body_is_refused_unread(server, loopback_is_public):
    with pytest.raises(TooLarge):
        download(f"{server.base}/announces-too-much", timeout=5, max_bytes=10**6)


@pytest.mark.django_db
def test_an_endless_body_stops_at_the_size_cap(tmp_path, server, settings):
    settings.IMPORT_ALLOW_PRIVATE_URLS = True
    data = download(f"{server.base}/endless", timeout=10, max_bytes=200_000, allow_private=True)
    assert 200_000 < len(data) <= 200_000 + 65536
    _, stderr = run_import(one_row_csv(tmp_path, f"{server.base}/endless"), "--max-bytes", "1000")
    assert "is larger than --max-bytes 1,000; skipped" in stderr


@pytest.mark.parametrize("path", ["/trickle-body", "/trickle-headers"])
def test_a_trickling_server_cannot_stretch_the_deadline(server, loopback_is_public, path):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        download(f"{server.base}{path}", timeout=0.8, max_bytes=10**6)
    assert time.monotonic() - started < 2.5


# --- https: the same checks, certificates verified ---------------------------------------------


@pytest.fixture
def tls_server(tmp_path):
    """The test server behind TLS, with a self-signed certificate for 127.0.0.1 (openssl)."""
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.hits = []
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base = f"https://127.0.0.1:{httpd.server_address[1]}"
    httpd.cert = cert
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_https_downloads_are_checked_verified_and_bounded(tls_server, monkeypatch):
    url = f"{tls_server.base}/photo.jpg"
    with pytest.raises(OSError, match="127.0.0.1 is a loopback address"):
        download(url, timeout=5, max_bytes=10**6)
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        download(url, timeout=5, max_bytes=10**6, allow_private=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.cert))  # trust the test certificate
    assert download(url, timeout=5, max_bytes=10**6, allow_private=True) == PHOTO
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        download(
            f"{tls_server.base}/trickle-body", timeout=0.8, max_bytes=10**6, allow_private=True
        )
    assert time.monotonic() - started < 2.5


# --- local paths ----------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """``catalog/`` (the CSV's folder, with a photo and a link out) and ``outside/``."""
    catalog, outside = tmp_path / "catalog", tmp_path / "outside"
    (catalog / "images").mkdir(parents=True)
    outside.mkdir()
    (catalog / "images" / "in.jpg").write_bytes(make_image_bytes("red"))
    (outside / "secret.jpg").write_bytes(make_image_bytes("blue"))
    os.symlink(outside / "secret.jpg", catalog / "images" / "link.jpg")
    return {"catalog": catalog, "outside": outside}


@pytest.mark.django_db
def test_paths_must_stay_inside_the_csv_folder(layout):
    catalog, outside = layout["catalog"], layout["outside"]
    rows = [
        "images/in.jpg",  # row 2: fine
        "../outside/secret.jpg",  # row 3
        "images/../../outside/secret.jpg",  # row 4
        str(outside / "secret.jpg"),  # row 5: absolute, elsewhere
        "images/link.jpg",  # row 6: a link out of the folder
        "/etc/passwd",  # row 7
        str(catalog / "images" / "in.jpg"),  # row 8: absolute, but inside
    ]
    csv_path = catalog / "products.csv"
    csv_path.write_text(
        "id,image,name\n" + "".join(f"P{i},{row},Thing {i}\n" for i, row in enumerate(rows))
    )
    stdout, stderr = run_import(csv_path)
    for number in (3, 4, 5, 6, 7):
        assert f"row {number}: " in stderr and "is outside the CSV's folder" in stderr, stderr
    assert "row 2:" not in stderr and "row 8:" not in stderr
    assert "Rows skipped: 5." in stdout
    assert sorted(Product.objects.values_list("external_id", flat=True)) == ["P0", "P6"]


@pytest.mark.django_db
def test_root_option_allows_another_folder(layout):
    csv_path = layout["catalog"] / "products.csv"
    csv_path.write_text(f"id,image,name\nP1,{layout['outside'] / 'secret.jpg'},Thing\n")
    stdout, stderr = run_import(csv_path, "--root", str(layout["outside"]))
    assert "Images: 1 added" in stdout, stderr


# --- the shop's setting reaches the command ------------------------------------------------------


@pytest.mark.django_db
def test_import_reads_the_setting_on_each_run(settings, monkeypatch, tmp_path):
    """The command passes IMPORT_ALLOW_PRIVATE_URLS to every fetch (no import-time copy)."""
    from shop.catalog.management.commands import import_catalog

    seen = []

    def fake_download(url: str, **options: object) -> bytes:
        seen.append(options["allow_private"])
        return PHOTO

    monkeypatch.setattr(import_catalog, "download", fake_download)
    csv_path = one_row_csv(tmp_path, "https://images.example.com/a.jpg")
    for value in (False, True):
        settings.IMPORT_ALLOW_PRIVATE_URLS = value
        run_import(csv_path, "--dry-run")
    assert seen == [False, True]
