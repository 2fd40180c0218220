"""Fetching catalog images from http(s) URLs without becoming a proxy into the shop's network.

``download()`` resolves each host itself, refuses loopback, private, link-local and other
non-public addresses (unless allowed), then connects to exactly the address it checked, so a
DNS answer that changes between the check and the connection (DNS rebinding) gains nothing.
Every redirect target goes through the same check; redirects go to http(s) only, five at most.
One deadline bounds the whole download (connection, TLS, headers, body, redirects): at the
deadline the sockets are shut down, whatever the server trickles. Proxies from the
environment are not used, so that the address checked is the address connected to.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
import urllib.request as urlrequest
from http.client import HTTPConnection, HTTPSConnection
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit

USER_AGENT = "shop-import-catalog/1.0"
MAX_REDIRECTS = 5


class BlockedAddress(OSError):
    """The URL's host is (or resolves to) an address the import must not connect to."""


class TooLarge(ValueError):
    """The server announced a body larger than the limit."""


def address_problem(address: str) -> str | None:
    """Why ``address`` is no public internet address ("loopback", "private"…), or None."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip.ipv4_mapped or ip.sixtofour or ip  # the IPv4 address inside, if any
    for kind in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


class Guard:
    """One download's policy and deadline: checks addresses, shuts sockets down when late."""

    def __init__(self, *, timeout: float, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.deadline = time.monotonic() + timeout
        self.sockets: list[socket.socket] = []
        self._timer = threading.Timer(timeout, self.expire)
        self._timer.daemon = True

    def __enter__(self) -> Guard:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._timer.cancel()

    @property
    def late(self) -> bool:
        return time.monotonic() >= self.deadline

    def expire(self) -> None:
        """Shut every socket of this download down: blocked reads return at once."""
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def connect(
        self, address: tuple[str, int], timeout: float | None, source_address: Any = None
    ) -> socket.socket:
        """Resolve, check every address, connect to a checked one (``create_connection``'s API)."""
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not self.allow_private:
            for *_, sockaddr in infos:
                if problem := address_problem(sockaddr[0]):
                    ip = sockaddr[0]
                    where = f"{ip} is" if ip == host else f"{host} is {ip},"
                    raise BlockedAddress(
                        f"{where} a {problem} address (IMPORT_ALLOW_PRIVATE_URLS is off)"
                    )
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                left = max(self.deadline - time.monotonic(), 0.01)
                sock.settimeout(min(timeout, left) if isinstance(timeout, int | float) else left)
                if source_address:
                    sock.bind(source_address)
                self.sockets.append(sock)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError(f"{host} has no address")


class _GuardedHTTPConnection(HTTPConnection):
    def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = guard.connect


class _GuardedHTTPSConnection(HTTPSConnection):
    def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = guard.connect
        self._guard = guard

    def connect(self) -> None:
        super().connect()
        self._guard.sockets.append(self.sock)  # the TLS socket (the plain one is detached)


class _HTTPHandler(urlrequest.HTTPHandler):
    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urlrequest.Request) -> Any:
        return self.do_open(_GuardedHTTPConnection, req, guard=self.guard)


class _HTTPSHandler(urlrequest.HTTPSHandler):
    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard

    def https_open(self, req: urlrequest.Request) -> Any:
        return self.do_open(_GuardedHTTPSConnection, req, guard=self.guard)


class _Redirects(urlrequest.HTTPRedirectHandler):
    """Follows at most ``MAX_REDIRECTS`` redirects, to http(s) URLs only."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(
        self, req: urlrequest.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urlrequest.Request | None:
        if urlsplit(newurl).scheme.lower() not in {"http", "https"}:
            raise HTTPError(newurl, code, f"redirect to {newurl} refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener(guard: Guard) -> urlrequest.OpenerDirector:
    """An opener with http(s) only (no file:, ftp:, data: or proxies), checked by ``guard``."""
    director = urlrequest.OpenerDirector()
    for handler in (
        urlrequest.UnknownHandler(),
        _HTTPHandler(guard),
        _HTTPSHandler(guard),
        urlrequest.HTTPDefaultErrorHandler(),
        _Redirects(),
        urlrequest.HTTPErrorProcessor(),
    ):
        director.add_handler(handler)
    return director


def download(url: str, *, timeout: float, max_bytes: int, allow_private: bool = False) -> bytes:
    """GET ``url`` within ``timeout`` seconds in all; at most ``max_bytes + 1`` bytes are read.

    Raises ``TimeoutError`` past the deadline, ``TooLarge`` when the server announces more
    than ``max_bytes``, ``BlockedAddress`` (inside ``URLError``) for non-public addresses
    unless ``allow_private``, and what ``urllib`` raises otherwise.
    """
    if urlsplit(url).scheme.lower() not in {"http", "https"}:
        raise ValueError(f"not an http(s) URL: {url}")
    request = urlrequest.Request(url, headers={"User-Agent": USER_AGENT})
    chunks, size = [], 0
    with Guard(timeout=timeout, allow_private=allow_private) as guard:
        try:
            with opener(guard).open(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > max_bytes:
                    raise TooLarge(f"{url} announces {int(length):,} bytes")
                while size <= max_bytes and (chunk := response.read1(64 * 1024)):
                    chunks.append(chunk)
                    size += len(chunk)
                    if guard.late:
                        raise TimeoutError
        except (TooLarge, HTTPError):
            raise
        except Exception:
            if guard.late:  # whatever broke, the deadline broke it
                raise TimeoutError from None
            raise
        if guard.late:  # shut down at the deadline: what was read is incomplete
            raise TimeoutError
    return b"".join(chunks)
