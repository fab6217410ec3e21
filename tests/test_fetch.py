"""grvl_sdk.fetch: allowlist, SSRF address checks, DNS pinning, redirects, size and time limits.

Network: only servers these tests start on 127.0.0.1, reached through an injected resolver; "public"
addresses (93.184.215.14) are served by an ``httpx.MockTransport`` and never contacted.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from grvl_sdk.errors import DeadlineExceededError, GRVLError, InputError
from grvl_sdk.fetch import FetchFailedError, FetchPolicy, FetchRefusedError, ImageFetcher
from grvl_sdk.images import load_image

PUBLIC = "93.184.215.14"  # only ever answered by a MockTransport
BIG = 20 * 1024 * 1024 + 1


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()


# -- helpers --------------------------------------------------------------------------------------


class FakeResolver:
    """Names -> addresses (a list, or a list per call); unknown names raise like getaddrinfo."""

    def __init__(self, table: dict[str, Any], delay: float = 0.0) -> None:
        self.table, self.delay = table, delay
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        time.sleep(self.delay)
        answer = self.table.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown test name {host}")
        if answer and isinstance(answer[0], list):  # one answer per call
            return answer[min(len(self.calls) - 1, len(answer) - 1)]
        return answer


LOCAL = {"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"], "evil.test": ["127.0.0.1"]}


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body streamed to the client (a ``content=`` response would already be read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data

    async def __aiter__(self) -> Any:
        yield self.data


class Mock:
    """A MockTransport recording requests; ``routes`` maps a path to a response factory."""

    def __init__(self, routes: dict[str, Callable[[httpx.Request], httpx.Response]] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.routes = routes or {}
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get(request.url.path)
        return route(request) if route else httpx.Response(200, stream=Body(PNG))


def redirect_to(location: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(302, headers={"Location": location})


def do_fetch(mode: str, policy: FetchPolicy, url: str, **kwargs: Any) -> bytes:
    """Fetch with a new fetcher, sync or async, closing it after."""
    deadline = kwargs.pop("deadline", None)
    if mode == "sync":
        with ImageFetcher(policy, **kwargs) as fetcher:
            return fetcher.fetch(url, deadline=deadline)

    async def run() -> bytes:
        async with ImageFetcher(policy, **kwargs) as fetcher:
            return await fetcher.afetch(url, deadline=deadline)

    return asyncio.run(run())


MODES = pytest.mark.parametrize("mode", ["sync", "async"])


# -- the local server -----------------------------------------------------------------------------


class Server:
    """A threaded HTTP(S) server on 127.0.0.1 recording each request's path and headers."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.sni: list[str | None] = []
        self.sent = 0
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append({"path": self.path, "headers": dict(self.headers)})
                outer.route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)  # type: ignore[assignment]
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str, host: str = "images.test", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def hosts(self) -> list[str]:
        return [r["headers"].get("Host", "") for r in self.requests]

    def route(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path == "/image.png":
            self.reply(h, 200, PNG, {"Content-Type": "image/png", "Content-Length": str(len(PNG))})
        elif path == "/echo":
            body = json.dumps({"headers": dict(h.headers), "path": h.path}).encode()
            self.reply(h, 200, body, {"Content-Length": str(len(body))})
        elif path == "/redirect":
            headers = {"Location": query["to"], "Content-Length": "0", "Set-Cookie": "session=secret; Path=/"}
            self.reply(h, 302, b"", headers)
        elif path == "/loop":
            self.reply(h, 302, b"", {"Location": "/loop", "Content-Length": "0"})
        elif path.startswith("/status/"):
            self.reply(h, int(path.rsplit("/", 1)[1]), b"nope", {"Content-Length": "4"})
        elif path == "/gzip":
            self.reply(h, 200, b"\x1f\x8b", {"Content-Encoding": "gzip", "Content-Length": "2"})
        elif path == "/big":
            headers = {"Content-Length": str(BIG)} if "length" in query else {}
            self.stream(h, headers, (b"\0" * 65536 for _ in range(BIG // 65536 + 1)), 0)
        elif path == "/trickle":
            self.stream(h, {"Content-Length": "100000"}, (b"x" for _ in range(100000)), 0.05)
        elif path == "/slow-headers":
            h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self.stream(h, None, (b"a" for _ in range(100000)), 0.05)

    def reply(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)

    def stream(self, h: BaseHTTPRequestHandler, headers: dict[str, str] | None, chunks: Any, pause: float) -> None:
        try:
            if headers is not None:
                h.send_response(200)
                for name, value in headers.items():
                    h.send_header(name, value)
                h.end_headers()
            for chunk in chunks:
                if self.stop.is_set():
                    return
                h.wfile.write(chunk)
                h.wfile.flush()
                self.sent += len(chunk)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the client hung up

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def local_policy(**kwargs: Any) -> FetchPolicy:
    settings_: dict[str, Any] = {
        "allow": ("images.test", "other.test"),
        "allow_http": True,
        "allow_private": True,
        "timeout": 5.0,
    }
    return FetchPolicy(**{**settings_, **kwargs})


# -- allowlist and URL checks ---------------------------------------------------------------------


def refused(url: str, policy: FetchPolicy, resolver: Any = None) -> FetchRefusedError:
    mock = Mock()
    with pytest.raises(FetchRefusedError) as info:
        ImageFetcher(policy, resolver=resolver or FakeResolver({}), transport=mock.transport).fetch(url)
    assert mock.requests == []
    return info.value


def test_errors_are_input_errors_with_stable_codes() -> None:
    assert issubclass(FetchRefusedError, InputError) and FetchRefusedError.code == "fetch_refused"
    assert issubclass(FetchFailedError, InputError) and FetchFailedError.code == "fetch_failed"


def test_empty_allowlist_refuses_everything() -> None:
    for url in ("https://example.com/a.png", f"https://{PUBLIC}/a.png"):
        assert "not in the fetch allowlist" in refused(url, FetchPolicy()).message


def test_host_not_in_allowlist_names_the_url_and_how_to_allow_it() -> None:
    error = refused("https://cdn.other.com/a.png", FetchPolicy(allow=("cdn.example.com",)))
    assert "https://cdn.other.com/a.png" in error.message
    assert "FetchPolicy.allow" in error.message and "'cdn.other.com'" in error.message
    assert error.code == "fetch_refused" and error.to_dict()["url"] == "https://cdn.other.com/a.png"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://example.com/_x",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "//example.com/a.png",
        "example.com/a.png",
    ],
)
def test_non_http_schemes_refused(url: str) -> None:
    assert "only http(s)" in refused(url, FetchPolicy(allow=("example.com",), allow_http=True)).message


def test_http_refused_unless_allow_http() -> None:
    resolver = FakeResolver({"example.com": [PUBLIC]})
    assert "allow_http" in refused("http://example.com/a.png", FetchPolicy(allow=("example.com",)), resolver).message
    mock = Mock()
    fetcher = ImageFetcher(
        FetchPolicy(allow=("example.com",), allow_http=True), resolver=resolver, transport=mock.transport
    )
    assert fetcher.fetch("http://example.com/a.png") == PNG


@pytest.mark.parametrize(
    "url", ["https://user:pass@example.com/a.png", "https://user@example.com/", "https://example.com:443@evil.com/"]
)
def test_credentials_refused(url: str) -> None:
    assert "credentials" in refused(url, FetchPolicy(allow=("example.com", "evil.com"))).message


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com\\@evil.com/",
        "https://example.com/a b",
        "https://example.com/\n",
        "https://[::1%25eth0]/",
        "https://exa%6dple.com/",
        "https://example.com:99999/",
        "https://example.com:8x/",
        "https:///a.png",
        "http://256.1.1.1/",
        "http://1.2.3.4.5/",
        "http://09.1.1.1/",
        "https://example.com/images/./a.png",
        "https://example.com/images/../secret",
        "https://example.com/images/%2E%2e/secret",
        "https://example.com/images/..%5csecret",
        "https://example.com/\ud800",
        "https://\ud800.example.com/",
    ],
)
def test_malformed_urls_refused(url: str) -> None:
    refused(url, FetchPolicy(allow=("example.com", "evil.com"), allow_http=True))


def test_unicode_lookalike_host_does_not_match_ascii_entry() -> None:
    policy = FetchPolicy(allow=("example.com",))
    error = refused("https://еxample.com/a.png", policy)  # Cyrillic "е"
    assert "xn--xample-2of.com" in error.message


def test_hosts_are_normalised_before_matching() -> None:
    resolver = FakeResolver({"example.com": [PUBLIC], "xn--bcher-kva.example": [PUBLIC]})
    mock = Mock()
    fetcher = ImageFetcher(
        FetchPolicy(allow=("example.com", "BÜCHER.example")), resolver=resolver, transport=mock.transport
    )
    for url in ("https://EXAMPLE.com./a.png", "https://ｅｘａｍｐｌｅ.com/a.png", "https://bücher.example/a.png"):
        assert fetcher.fetch(url) == PNG
    assert [r.headers["host"] for r in mock.requests] == ["example.com", "example.com", "xn--bcher-kva.example"]
    assert {call[0] for call in resolver.calls} == {"example.com", "xn--bcher-kva.example"}


@pytest.mark.parametrize(
    ("host", "admitted"),
    [
        ("a.example.org", True),
        ("b.a.example.org", True),
        ("A.Example.Org", True),
        ("example.org", False),
        ("example.org.evil.com", False),
        ("evilexample.org", False),
        ("a.example.org.evil.com", False),
    ],
)
def test_host_glob(host: str, admitted: bool) -> None:
    policy = FetchPolicy(allow=("*.example.org",))
    resolver = FakeResolver({host.lower(): [PUBLIC]})
    if admitted:
        assert ImageFetcher(policy, resolver=resolver, transport=Mock().transport).fetch(f"https://{host}/x") == PNG
    else:
        assert "allowlist" in refused(f"https://{host}/x", policy, resolver).message


@pytest.mark.parametrize(
    ("url", "admitted"),
    [
        ("https://cdn.example.com/images/a.png", True),
        ("https://cdn.example.com:443/images/sub/a.png?v=1", True),
        ("https://cdn.example.com/other/a.png", False),
        ("https://cdn.example.com/images/../secret", False),
        ("https://cdn.example.com/images/%2e%2e/secret", False),
        ("https://cdn.example.com/images/..%2fsecret", False),
        ("https://cdn.example.com/images/..;/secret", False),
        ("https://cdn.example.com/imagesX/a.png", False),
        ("https://cdn.example.com:8443/images/a.png", False),
        ("http://cdn.example.com/images/a.png", False),
        ("https://www.example.com/images/a.png", False),
    ],
)
def test_url_prefix(url: str, admitted: bool) -> None:
    policy = FetchPolicy(allow=("https://cdn.example.com/images/",), allow_http=True)
    resolver = FakeResolver({"cdn.example.com": [PUBLIC], "www.example.com": [PUBLIC]})
    if admitted:
        mock = Mock()
        assert ImageFetcher(policy, resolver=resolver, transport=mock.transport).fetch(url) == PNG
        assert mock.requests[0].url.path.startswith("/images/")
    else:
        refused(url, policy, resolver)


@pytest.mark.parametrize(
    "entry", ["", "*", "*.", "ex*.com", "a.*.com", "example.com/path", "host:443", "ftp://x/", "bad host", 3]
)
def test_bad_allowlist_entries(entry: Any) -> None:
    with pytest.raises(InputError, match="allow"):
        FetchPolicy(allow=(entry,))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"allow": "example.com"},
        {"max_bytes": 0},
        {"max_bytes": True},
        {"max_redirects": -1},
        {"timeout": 0},
        {"timeout": float("inf")},
        {"timeout": "1"},
        {"allow_private": "false"},
        {"allow_http": 1},
    ],
)
def test_bad_policy_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        FetchPolicy(**kwargs)


# -- addresses ------------------------------------------------------------------------------------

PRIVATE = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "fc00::1",
    "fd12:3456::1",
    "169.254.169.254",
    "fe80::1",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "100.64.0.1",
    "100.127.255.254",
    "192.0.2.1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "2002:7f00:1::1",
    "64:ff9b::a9fe:a9fe",
]


@pytest.mark.parametrize("address", PRIVATE)
@MODES
def test_non_public_addresses_refused(address: str, mode: str) -> None:
    resolver = FakeResolver({"evil.test": [address]})
    mock = Mock()
    with pytest.raises(FetchRefusedError, match="only public addresses") as info:
        do_fetch(
            mode,
            FetchPolicy(allow=("evil.test",)),
            "https://evil.test/a.png",
            resolver=resolver,
            transport=mock.transport,
        )
    assert info.value.details["address"] and mock.requests == []


def test_any_non_public_address_among_several_refuses() -> None:
    resolver = FakeResolver({"mixed.test": [PUBLIC, "2606:4700::1", "10.0.0.1"]})
    refused("https://mixed.test/a.png", FetchPolicy(allow=("mixed.test",)), resolver)


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/a.png",
        "http://0x7f.1/a.png",
        "http://127.1/a.png",
        "http://0177.0.0.1/a.png",
        "http://0x7f000001/a.png",
        "http://127.0.0.1./a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://[::1]/a.png",
    ],
)
def test_ipv4_in_odd_forms_is_checked_as_an_address(url: str) -> None:
    resolver = FakeResolver({})
    policy = FetchPolicy(allow=("127.0.0.1", "[::ffff:7f00:1]", "::1"), allow_http=True)
    assert "loopback" in refused(url, policy, resolver).message
    assert resolver.calls == []  # an address is not resolved


def test_ipv4_in_odd_forms_reaches_the_server_when_private_allowed(server: Server) -> None:
    policy = FetchPolicy(allow=("127.0.0.1",), allow_http=True, allow_private=True)
    resolver = FakeResolver({})
    with ImageFetcher(policy, resolver=resolver) as fetcher:
        for host in ("2130706433", "0x7f.1", "127.1"):
            assert fetcher.fetch(f"http://{host}:{server.port}/image.png") == PNG
    assert server.hosts() == [f"127.0.0.1:{server.port}"] * 3
    assert resolver.calls == []  # addresses are not resolved


def test_loopback_refused_even_when_allowlisted(server: Server) -> None:
    with pytest.raises(FetchRefusedError, match=r"127\.0\.0\.1, a loopback address"):
        do_fetch("sync", local_policy(allow_private=False), server.url("/image.png"), resolver=FakeResolver(LOCAL))
    assert server.requests == []


@MODES
def test_connects_to_the_checked_address_with_the_name_in_host_and_sni(mode: str) -> None:
    mock = Mock()
    resolver = FakeResolver({"cdn.example.com": [PUBLIC]})
    policy = FetchPolicy(allow=("cdn.example.com",))
    assert do_fetch(mode, policy, "https://cdn.example.com:8443/a.png?x=1", resolver=resolver, transport=mock.transport)
    request = mock.requests[0]
    assert (request.url.host, request.url.port, request.url.raw_path) == (PUBLIC, 8443, b"/a.png?x=1")
    assert request.headers["host"] == "cdn.example.com:8443"
    assert request.extensions["sni_hostname"] == "cdn.example.com"
    assert "authorization" not in request.headers and "cookie" not in request.headers
    assert resolver.calls == [("cdn.example.com", 8443)]


@MODES
def test_dns_rebinding_resolves_once_and_connects_to_the_checked_address(mode: str) -> None:
    resolver = FakeResolver({"rebind.test": [[PUBLIC], ["127.0.0.1"]]})
    mock = Mock()
    policy = FetchPolicy(allow=("rebind.test",))
    assert do_fetch(mode, policy, "https://rebind.test/a.png", resolver=resolver, transport=mock.transport) == PNG
    assert len(resolver.calls) == 1  # checked and connected with one answer
    assert [r.url.host for r in mock.requests] == [PUBLIC]
    with pytest.raises(FetchRefusedError, match="loopback"):  # the next fetch sees the new answer, and refuses it
        do_fetch(mode, policy, "https://rebind.test/a.png", resolver=resolver, transport=mock.transport)
    assert len(mock.requests) == 1


class Unreachable(Mock):
    """Connections to ``PUBLIC`` fail; ``/read-error`` fails after connecting."""

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == PUBLIC:
            raise httpx.ConnectError("no route", request=request)
        if request.url.path == "/read-error":
            raise httpx.ReadError("reset", request=request)
        return httpx.Response(200, stream=Body(PNG))


@MODES
def test_next_address_tried_only_when_one_does_not_connect(mode: str) -> None:
    mock = Unreachable()
    resolver = FakeResolver({"cdn.test": [PUBLIC, "2606:4700::1"]})
    policy = FetchPolicy(allow=("cdn.test",))
    assert do_fetch(mode, policy, "https://cdn.test/a.png", resolver=resolver, transport=mock.transport) == PNG
    assert [r.url.host for r in mock.requests] == [PUBLIC, "2606:4700::1"]
    with pytest.raises(FetchFailedError, match="ReadError"):  # not a connection failure: no other address tried
        do_fetch(mode, policy, "https://cdn.test/read-error", resolver=FakeResolver({"cdn.test": ["2606:4700::1"] * 2}),
                 transport=mock.transport)  # fmt: skip
    assert len(mock.requests) == 3
    with pytest.raises(FetchFailedError, match="ConnectError"):
        do_fetch(
            mode, policy, "https://cdn.test/", resolver=FakeResolver({"cdn.test": [PUBLIC]}), transport=mock.transport
        )


# -- the real local server ------------------------------------------------------------------------


@MODES
def test_fetches_an_image_from_the_local_server(server: Server, mode: str) -> None:
    data = do_fetch(mode, local_policy(), server.url("/image.png"), resolver=FakeResolver(LOCAL))
    assert data == PNG and load_image(data).size == (8, 6)
    assert server.hosts() == [f"images.test:{server.port}"]
    assert server.requests[0]["headers"]["Accept-Encoding"] == "identity"


@MODES
def test_redirect_to_an_allowed_host_sends_no_cookie_or_credentials(server: Server, mode: str) -> None:
    target = server.url("/echo", host="other.test")
    body = do_fetch(mode, local_policy(), server.url(f"/redirect?to={target}"), resolver=FakeResolver(LOCAL))
    echoed = json.loads(body)["headers"]
    assert echoed["Host"] == f"other.test:{server.port}"
    assert not {"Cookie", "Authorization"} & set(echoed)
    assert server.hosts() == [f"images.test:{server.port}", f"other.test:{server.port}"]


@MODES
def test_relative_redirect(server: Server, mode: str) -> None:
    url = server.url("/redirect?to=/image.png")
    assert do_fetch(mode, local_policy(), url, resolver=FakeResolver(LOCAL)) == PNG


@MODES
def test_redirect_to_a_host_not_allowed_is_refused(server: Server, mode: str) -> None:
    target = server.url("/image.png", host="evil.test")
    with pytest.raises(FetchRefusedError, match=r"evil\.test.*redirected from.*not in the fetch allowlist"):
        do_fetch(mode, local_policy(), server.url(f"/redirect?to={target}"), resolver=FakeResolver(LOCAL))
    assert server.hosts() == [f"images.test:{server.port}"]


@MODES
def test_redirect_to_loopback_allowed_only_with_allow_private(server: Server, mode: str) -> None:
    policy = local_policy(allow=("images.test", "127.0.0.1"))
    target = f"http://127.0.0.1:{server.port}/image.png"
    assert do_fetch(mode, policy, server.url(f"/redirect?to={target}"), resolver=FakeResolver(LOCAL)) == PNG
    assert server.hosts() == [f"images.test:{server.port}", f"127.0.0.1:{server.port}"]


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1/latest",
        "http://internal.test/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/",
    ],
)
@MODES
def test_redirect_to_a_non_public_address_is_refused(location: str, mode: str) -> None:
    mock = Mock({"/start": redirect_to(location)})
    resolver = FakeResolver({"cdn.test": [PUBLIC], "internal.test": ["127.0.0.1"]})
    allow = ("cdn.test", "internal.test", "127.0.0.1", "::1", "169.254.169.254", "::ffff:a9fe:a9fe")
    policy = FetchPolicy(allow=allow, allow_http=True)
    with pytest.raises(FetchRefusedError, match="only public addresses"):
        do_fetch(mode, policy, "https://cdn.test/start", resolver=resolver, transport=mock.transport)
    assert [r.url.host for r in mock.requests] == [PUBLIC]


def test_redirect_from_https_to_http_refused_by_default() -> None:
    mock = Mock({"/start": redirect_to("http://cdn.test/a.png")})
    with pytest.raises(FetchRefusedError, match="http image URLs are refused"):
        ImageFetcher(
            FetchPolicy(allow=("cdn.test",)), resolver=FakeResolver({"cdn.test": [PUBLIC]}), transport=mock.transport
        ).fetch("https://cdn.test/start")


@MODES
def test_redirect_loop_is_counted(server: Server, mode: str) -> None:
    with pytest.raises(FetchFailedError, match=r"too many redirects \(over 3\)"):
        do_fetch(mode, local_policy(), server.url("/loop"), resolver=FakeResolver(LOCAL))
    assert len(server.requests) == 4


def test_max_redirects_zero_refuses_any_redirect(server: Server) -> None:
    url = server.url("/redirect?to=/image.png")
    with pytest.raises(FetchFailedError, match="too many redirects"):
        do_fetch("sync", local_policy(max_redirects=0), url, resolver=FakeResolver(LOCAL))


@pytest.mark.parametrize("status", [404, 500, 204])
@MODES
def test_non_200_status(server: Server, status: int, mode: str) -> None:
    with pytest.raises(FetchFailedError, match=f"HTTP {status}") as info:
        do_fetch(mode, local_policy(), server.url(f"/status/{status}"), resolver=FakeResolver(LOCAL))
    assert info.value.details["status_code"] == status


def test_compressed_body_refused(server: Server) -> None:
    with pytest.raises(FetchFailedError, match="compressed"):
        do_fetch("sync", local_policy(), server.url("/gzip"), resolver=FakeResolver(LOCAL))


@MODES
def test_unknown_host_and_refused_connection(server: Server, mode: str) -> None:
    with pytest.raises(FetchFailedError, match=r"cannot resolve images\.test"):
        do_fetch(mode, local_policy(), server.url("/image.png"), resolver=FakeResolver({}))
    with socket.socket() as bound:  # bound, not listening: connections to its port are refused
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(FetchFailedError, match="ConnectError"):
            url = f"http://images.test:{bound.getsockname()[1]}/"
            do_fetch(mode, local_policy(), url, resolver=FakeResolver(LOCAL))


def test_not_an_image_is_left_to_load_image(server: Server) -> None:
    from grvl_sdk.errors import ImageError

    data = do_fetch("sync", local_policy(), server.url("/echo"), resolver=FakeResolver(LOCAL))
    with pytest.raises(ImageError):
        load_image(data)


# -- size and time --------------------------------------------------------------------------------


@MODES
def test_content_length_over_the_cap_refused_before_reading(server: Server, mode: str) -> None:
    with pytest.raises(FetchFailedError, match=f"image over {20 * 1024 * 1024} bytes \\(Content-Length {BIG}\\)"):
        do_fetch(mode, local_policy(), server.url("/big?length=1"), resolver=FakeResolver(LOCAL))


@MODES
def test_streamed_body_cut_at_the_cap(server: Server, mode: str) -> None:
    with pytest.raises(FetchFailedError, match=f"image over {20 * 1024 * 1024} bytes"):
        do_fetch(mode, local_policy(), server.url("/big"), resolver=FakeResolver(LOCAL))


def test_body_exactly_at_the_cap_is_fetched(server: Server) -> None:
    policy = local_policy(max_bytes=len(PNG))
    assert do_fetch("sync", policy, server.url("/image.png"), resolver=FakeResolver(LOCAL)) == PNG
    with pytest.raises(FetchFailedError, match=f"image over {len(PNG) - 1} bytes"):
        do_fetch("sync", local_policy(max_bytes=len(PNG) - 1), server.url("/image.png"), resolver=FakeResolver(LOCAL))


@pytest.mark.parametrize("path", ["/trickle", "/slow-headers"])
@MODES
def test_trickling_server_times_out(server: Server, path: str, mode: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailedError, match=r"timed out after 0\.5 s") as info:
        do_fetch(mode, local_policy(timeout=0.5), server.url(path), resolver=FakeResolver(LOCAL))
    assert not isinstance(info.value, DeadlineExceededError)
    assert 0.45 <= time.monotonic() - started < 1.5


@pytest.mark.parametrize("path", ["/trickle", "/slow-headers"])
@MODES
def test_trickling_server_hits_the_deadline(server: Server, path: str, mode: str) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        do_fetch(mode, local_policy(timeout=10), server.url(path), resolver=FakeResolver(LOCAL), deadline=started + 0.4)
    assert time.monotonic() - started < 1.4


def test_abandoned_sync_fetch_releases_its_connection(server: Server) -> None:
    # The fetcher is left open while the server is watched: close() would end the connection too.
    fetcher = ImageFetcher(local_policy(timeout=0.3), resolver=FakeResolver(LOCAL))
    with pytest.raises(FetchFailedError, match="timed out"):
        fetcher.fetch(server.url("/slow-headers"))
    time.sleep(0.2)  # the socket was shut down: the worker stops reading and closes it, the server's writes fail
    sent = server.sent
    time.sleep(0.4)
    assert server.sent == sent
    fetcher.close()


@MODES
def test_the_limit_covers_every_redirect(server: Server, mode: str) -> None:
    url = server.url(f"/redirect?to={server.url('/trickle', host='other.test')}")
    started = time.monotonic()
    with pytest.raises(FetchFailedError, match="timed out"):
        do_fetch(mode, local_policy(timeout=0.5), url, resolver=FakeResolver(LOCAL))
    assert time.monotonic() - started < 1.5


@MODES
def test_slow_resolver_is_bounded(mode: str) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        do_fetch(
            mode, local_policy(), "http://images.test/", resolver=FakeResolver(LOCAL, delay=3), deadline=started + 0.3
        )
    assert time.monotonic() - started < 1.5


def test_deadline_already_passed() -> None:
    with pytest.raises(DeadlineExceededError):
        do_fetch(
            "sync", local_policy(), "http://images.test/", resolver=FakeResolver(LOCAL), deadline=time.monotonic() - 1
        )


# -- HTTPS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for images.test (made with the openssl command; skipped without it)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[Server, ssl.SSLContext]]:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(*certificate)
    s = Server(tls=server_context)
    yield s, ssl.create_default_context(cafile=str(certificate[0]))
    s.close()


@MODES
def test_https_sends_sni_and_host_of_the_name_and_connects_to_the_checked_address(tls_server: Any, mode: str) -> None:
    server, client_context = tls_server
    policy = local_policy(allow_http=False)
    url = server.url("/echo", scheme="https")
    body = do_fetch(mode, policy, url, resolver=FakeResolver(LOCAL), ssl_context=client_context)
    assert json.loads(body)["headers"]["Host"] == f"images.test:{server.port}"
    assert server.sni == ["images.test"]


@MODES
def test_https_certificate_is_verified_against_the_name(tls_server: Any, mode: str) -> None:
    server, client_context = tls_server  # other.test resolves to the same server, whose certificate is for images.test
    with pytest.raises(FetchFailedError, match=r"CERTIFICATE_VERIFY_FAILED"):
        do_fetch(mode, local_policy(), server.url("/echo", host="other.test", scheme="https"),
                 resolver=FakeResolver(LOCAL), ssl_context=client_context)  # fmt: skip
    with pytest.raises(FetchFailedError):  # by address: the certificate has no IP name
        do_fetch(mode, local_policy(allow=("127.0.0.1",)), f"https://127.0.0.1:{server.port}/echo",
                 resolver=FakeResolver({}), ssl_context=client_context)  # fmt: skip
    assert server.requests == []


# -- closing, transports --------------------------------------------------------------------------


def test_closed_fetcher_refuses() -> None:
    fetcher = ImageFetcher(FetchPolicy(allow=("x.test",)), resolver=FakeResolver({}), transport=Mock().transport)
    fetcher.close()
    with pytest.raises(InputError, match="closed"):
        fetcher.fetch("https://x.test/")
    with pytest.raises(InputError, match="closed"):
        asyncio.run(fetcher.afetch("https://x.test/"))


def test_transport_of_the_wrong_kind() -> None:
    with pytest.raises(InputError, match="not a sync"):
        ImageFetcher(
            FetchPolicy(allow=("x.test",)), resolver=FakeResolver({}), transport=httpx.AsyncHTTPTransport()
        ).fetch("https://x.test/")
    with pytest.raises(InputError, match="not an async"):
        asyncio.run(
            ImageFetcher(
                FetchPolicy(allow=("x.test",)), resolver=FakeResolver({}), transport=httpx.HTTPTransport()
            ).afetch("https://x.test/")
        )


def test_bad_arguments() -> None:
    with pytest.raises(InputError):
        ImageFetcher({"allow": ()})  # type: ignore[arg-type]
    fetcher = ImageFetcher(FetchPolicy(allow=("x.test",)), resolver=FakeResolver({}), transport=Mock().transport)
    with pytest.raises(InputError):
        fetcher.fetch(b"https://x.test/")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        fetcher.fetch("https://x.test/", deadline="soon")  # type: ignore[arg-type]


def test_bad_resolver_answers() -> None:
    policy = FetchPolicy(allow=("x.test",))
    for answer in ([], ["not-an-ip"], [None], "127.0.0.1"):
        with pytest.raises(InputError):
            ImageFetcher(policy, resolver=lambda h, p, a=answer: a, transport=Mock().transport).fetch("https://x.test/")


# -- property -------------------------------------------------------------------------------------

_HOSTS = st.sampled_from(
    ["images.test", "IMAGES.test.", "a.example.org", "evil.test", "127.0.0.1", "0x7f.1", "2130706433", "[::1]",
     "[::ffff:127.0.0.1]", "169.254.169.254", "example.org", "b.example.org", "xn--xample-2of.com", "еxample.com",
     "ｅｘａｍｐｌｅ.org", "", "a..b",
     "-x-.test", "user:pass@images.test", "images.test:0", "images.test:65536", "[", "[]", "%2e", "a" * 70]
)  # fmt: skip
_URLS = st.one_of(
    st.text(max_size=60),
    st.builds(
        "https://images.test/{}".format,
        st.text(st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)), max_size=10),
    ),
    st.builds(
        lambda scheme, host, port, path: f"{scheme}{host}{port}{path}",
        st.sampled_from(["https://", "http://", "HTTPS://", "file://", "ftp://", "data:", "//", "", "https:/"]),
        st.one_of(_HOSTS, st.text(max_size=20)),
        st.sampled_from(["", ":443", ":80", ":", ":x", ":99999"]),
        st.one_of(
            st.sampled_from(["/", "/images/a.png", "/images/../x", "/%2e%2e/", "?q", "#f", "\\x"]), st.text(max_size=20)
        ),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(url=_URLS, allow_private=st.booleans())
def test_fetch_raises_only_input_or_deadline_errors(url: str, allow_private: bool) -> None:
    mock = Mock()
    resolver = FakeResolver({"images.test": [PUBLIC], "a.example.org": ["10.0.0.1"], "evil.test": ["127.0.0.1"]})
    policy = FetchPolicy(
        allow=("images.test", "*.example.org", "https://127.0.0.1/images/", "example.org"),
        allow_http=True,
        allow_private=allow_private,
        timeout=2,
    )
    try:
        assert ImageFetcher(policy, resolver=resolver, transport=mock.transport).fetch(url) == PNG
        event("fetched")
    except (InputError, DeadlineExceededError) as exc:
        assert isinstance(exc, GRVLError) and exc.code
        event(exc.code)
    for request in mock.requests:  # whatever was sent went to an address the policy allows
        assert request.url.host in ((PUBLIC, "10.0.0.1", "127.0.0.1") if allow_private else (PUBLIC,))
