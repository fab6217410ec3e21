"""Opt-in fetching of remote images, with protection against server-side request forgery (SSRF).

:class:`ImageFetcher` downloads the ``http(s)://`` images that possibly untrusted callers name, within
a :class:`FetchPolicy`, and returns bytes for :func:`grvl_sdk.images.load_image`. Protected, for the
URL and every redirect target alike:

* Only what the allowlist admits: ``"https://host[:port]/prefix"`` (that scheme, host, port and path
  prefix), ``"*.example.org"`` (subdomains, not ``example.org`` itself), ``"example.net"`` (that host,
  any port); an empty allowlist fetches nothing. Hosts are normalised (lower case, IDNA/UTS-46 to
  punycode, trailing dot dropped) before matching, so a look-alike Unicode host never matches an ASCII
  entry; IPv4 in odd forms (``2130706433``, ``0x7f.1``, ``127.1``) is read as browsers read it.
* Only ``https`` (and ``http`` with ``allow_http``). Refused: credentials in the URL, whitespace,
  control characters, backslashes, dot segments in the path (also encoded), IPv6 zone ids, bad ports.
* Every address the host resolves to must be public: loopback, private, shared (100.64/10), link-local
  (the 169.254.169.254 cloud metadata), unspecified, multicast, reserved and other non-global addresses,
  also inside IPv4-mapped, 6to4 and NAT64 addresses, are refused unless ``allow_private``. The host is
  resolved once per hop and the connection goes to the checked address (no second lookup: DNS rebinding
  cannot swap it); ``Host`` and the TLS SNI keep the name, and the certificate is verified against it.
  No connection is shared between host names.
* Redirects (at most ``max_redirects``) are checked like the first URL. No credentials are ever sent:
  no ``Authorization``, no cookies (none are kept), no ``.netrc``, no proxy from the environment.
* A ``Content-Length`` over ``max_bytes`` is refused before the body is read, the body is cut at
  ``max_bytes``, and compressed bodies are refused (nothing is decompressed here).
* The whole fetch (resolution, connections, redirects, body) ends by ``min(timeout, deadline)``, even
  against a hung resolver or a server trickling its headers or body (the synchronous fetch runs on a
  daemon thread whose sockets are shut down when the caller stops waiting).

Not protected: what the allowlist admits (a compromised allowlisted host, redirects between allowlisted
hosts, other customers' files on an allowlisted CDN); ``allow_private=True`` turns the address checks off,
``allow_http=True`` allows fetches anyone on the path can read or change; an injected ``resolver`` or
``transport`` is trusted (one that proxies or resolves again escapes the address pinning); a resolver that
never returns keeps its thread; whether the content is an image (``load_image`` checks, with its
decompression-bomb limit); how many fetches run at once is the caller's to bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import math
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx
import idna

from grvl_sdk._threads import DaemonPool, to_daemon_thread
from grvl_sdk.errors import DeadlineExceededError, GRVLError, InputError

__all__ = ["FetchFailedError", "FetchPolicy", "FetchRefusedError", "ImageFetcher", "Resolver"]

#: ``resolver(host, port)`` -> the host's addresses, as strings.
Resolver = Callable[[str, int], list[str]]
IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")
_NETLOC = re.compile(r"(\[[^\[\]]*\]|[^\[\]:]*)(?::([0-9]{0,5}))?")
_SAFE = "!#$%&'()*+,/:;=?@[]~"
_EMBEDS_V4 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_POOL = DaemonPool("grvl-fetch")


class FetchRefusedError(InputError):
    """The URL, a redirect target or an address they resolve to is not allowed by the fetch policy."""

    code: ClassVar[str] = "fetch_refused"


class FetchFailedError(InputError):
    """An allowed fetch failed: unknown host, no connection, a status other than 200, too large, timed out."""

    code: ClassVar[str] = "fetch_failed"


@dataclass(frozen=True)
class _Target:
    url: str  # normalised: for messages and relative redirects
    scheme: str
    host: str  # lower-case ASCII name, or a canonical address
    port: int
    explicit_port: bool
    path: str  # percent-encoded, with the query
    ip: IP | None  # the host, when it is an address


def _ipv4(host: str) -> ipaddress.IPv4Address | None:
    """WHATWG URL rules: a host ending in a number is IPv4, in 1 to 4 parts, each decimal, 0x hex or 0 octal."""
    parts = host.split(".")
    if not _NUMBER.fullmatch(parts[-1]):
        return None
    try:
        if len(parts) > 4 or not all(_NUMBER.fullmatch(p) for p in parts):
            raise ValueError
        nums = [int(p[2:] or "0", 16) if p[:2] == "0x" else int(p, 8 if p[:1] == "0" else 10) for p in parts]
        if any(n > 255 for n in nums[:-1]) or nums[-1] >= 256 ** (5 - len(nums)):
            raise ValueError
    except ValueError:
        raise FetchRefusedError(f"invalid IPv4 address {host!r}") from None
    return ipaddress.IPv4Address(nums[-1] + sum(n << 8 * (3 - i) for i, n in enumerate(nums[:-1])))


def _host(raw: str) -> tuple[str, IP | None]:
    """``(normalised host, the address when it is one)``; refuses anything that is not a valid host."""
    if raw.startswith("["):
        try:
            if "%" in raw:
                raise ValueError("zone id")
            ip = ipaddress.IPv6Address(raw[1:-1])
        except ValueError:
            raise FetchRefusedError(f"invalid IPv6 address {raw!r} (zone ids are refused)") from None
        return str(ip), ip
    host = raw.lower()
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise FetchRefusedError(f"invalid international host name {raw!r}: {exc}") from None
    host = host[:-1] if host.endswith(".") else host
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise FetchRefusedError(f"invalid host {raw!r}")
    ip4 = _ipv4(host)
    return (host, None) if ip4 is None else (str(ip4), ip4)


def _parse(url: str) -> _Target:
    """Parse and normalise an http(s) URL, refusing malformed ones (the policy is checked elsewhere)."""
    if not isinstance(url, str):
        raise FetchRefusedError(f"an image URL must be a string, got {type(url).__name__}")
    short = url[:200]
    if re.search(r"[\x00-\x20\x7f\\]", url):
        raise FetchRefusedError(f"image URL {short!r} holds whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise FetchRefusedError(f"invalid image URL {short!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _PORTS:
        raise FetchRefusedError(f"only http(s) image URLs are fetched, not {scheme or 'scheme-less'} URLs: {short!r}")
    if "@" in parts.netloc:
        raise FetchRefusedError(f"image URLs with credentials are refused: {short!r}")
    match = _NETLOC.fullmatch(parts.netloc)
    if not match or not match.group(1):
        raise FetchRefusedError(f"invalid host or port in image URL {short!r}")
    host, ip = _host(match.group(1))
    port = int(match.group(2)) if match.group(2) else _PORTS[scheme]
    if not 0 < port < 65536:
        raise FetchRefusedError(f"invalid port in image URL {short!r}")
    path = parts.path or "/"
    if any(s.split(";")[0] in (".", "..") for s in re.split(r"[/\\]", unquote(path))):
        raise FetchRefusedError(f"dot segments (. or ..) in image URL paths are refused: {short!r}")
    try:
        path = quote(path + (f"?{parts.query}" if parts.query else ""), safe=_SAFE)
    except UnicodeError:
        raise FetchRefusedError(f"image URL {short!r} is not valid Unicode") from None
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if match.group(2) else "")
    return _Target(f"{scheme}://{netloc}{path}", scheme, host, port, bool(match.group(2)), path, ip)


@dataclass(frozen=True)
class _Rule:
    kind: str  # "prefix", "glob" or "host"
    host: str
    prefix: _Target | None = None

    @classmethod
    def parse(cls, entry: str) -> _Rule:
        if not isinstance(entry, str) or not entry:
            raise InputError(f"FetchPolicy.allow entries must be non-empty strings, got {entry!r}")
        try:
            if "://" in entry:
                prefix = _parse(entry)
                return cls("prefix", prefix.host, prefix)
            if entry.startswith("*.") and "*" not in entry[2:] and ":" not in entry:
                return cls("glob", _host(entry[2:])[0])
            if "*" not in entry and "/" not in entry:  # a host, or an IPv6 address with or without brackets
                return cls("host", _host(f"[{entry.strip('[]')}]" if ":" in entry else entry)[0])
        except FetchRefusedError as exc:
            raise InputError(f"bad FetchPolicy.allow entry {entry!r}: {exc.message}") from None
        raise InputError(f"bad FetchPolicy.allow entry {entry!r}: use a URL prefix, '*.domain' or a host name")

    def admits(self, t: _Target) -> bool:
        if self.kind == "host":
            return t.host == self.host
        if self.kind == "glob":
            return t.ip is None and t.host.endswith("." + self.host)
        p = self.prefix
        assert p is not None
        return (t.scheme, t.host, t.port) == (p.scheme, p.host, p.port) and t.path.startswith(p.path)


@dataclass(frozen=True, kw_only=True)
class FetchPolicy:
    """What :class:`ImageFetcher` may fetch (see the module docstring). ``timeout``: seconds for the whole fetch."""

    allow: tuple[str, ...] = ()
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0
    max_redirects: int = 3
    allow_http: bool = False
    allow_private: bool = False
    _rules: tuple[_Rule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.allow, str) or not isinstance(self.allow, (tuple, list)):
            raise InputError(f"FetchPolicy.allow must be a tuple of strings, got {self.allow!r}")
        object.__setattr__(self, "allow", tuple(self.allow))
        object.__setattr__(self, "_rules", tuple(_Rule.parse(entry) for entry in self.allow))
        for name in ("allow_http", "allow_private"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"FetchPolicy.{name} must be True or False, got {getattr(self, name)!r}")
        for name, low in (("max_bytes", 1), ("max_redirects", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"FetchPolicy.{name} must be an integer >= {low}, got {value!r}")
        t = self.timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
            raise InputError(f"FetchPolicy.timeout must be a positive finite number of seconds, got {t!r}")


def _refusal(ip: IP) -> str | None:
    """What kind of non-public address ``ip`` is (or holds), or ``None`` for a public one."""
    addresses: list[IP] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        addresses += [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
        addresses += [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) for net in _EMBEDS_V4 if ip in net]
    for a in reversed(addresses):
        for kind in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
            if getattr(a, f"is_{kind}"):
                return kind.replace("_", "-")
        if a in _SHARED or not a.is_global:
            return "shared (carrier-grade NAT)" if a in _SHARED else "non-global"
    return None


class _Budget:
    """The end of one fetch: ``min(timeout, deadline)``, and which of the two it is."""

    def __init__(self, timeout: float, deadline: float | None, url: str) -> None:
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))):
            raise InputError(f"deadline must be a time.monotonic() value or None, got {deadline!r}")
        now = time.monotonic()
        self.url, self.timeout = url, timeout
        self.binding = deadline is not None and deadline <= now + timeout
        self.end = min(now + timeout, deadline) if deadline is not None else now + timeout

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise self.expired()
        return remaining

    def expired(self) -> GRVLError:
        if self.binding:
            return DeadlineExceededError(f"deadline passed while fetching {self.url}", url=self.url)
        return FetchFailedError(f"fetching {self.url} timed out after {self.timeout} s", url=self.url)


class _Watch:
    """The sockets of one synchronous fetch, shut down when the caller stops waiting (so an abandoned
    worker stops reading a server that trickles its headers, and closes the connection)."""

    def __init__(self) -> None:
        self.cancelled = False
        self.streams: list[Any] = []

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith(("connect_tcp.complete", "start_tls.complete")):
            self.streams.append(info["return_value"])  # appended, then the flag read: cancel() sees it, or
            if self.cancelled:  # this sees the flag (under the GIL)
                self.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        for stream in list(self.streams):
            with contextlib.suppress(Exception):  # the plain socket under TLS is already detached
                socket.socket.shutdown(stream.get_extra_info("socket"), socket.SHUT_RDWR)


def _default_resolver(host: str, port: int) -> list[str]:
    return list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


class ImageFetcher:
    """Fetches images under a :class:`FetchPolicy`; see the module docstring for what is protected.

    ``resolver(host, port)`` returns addresses (default: ``socket.getaddrinfo``). ``transport`` replaces
    the default httpx transports (a sync one serves :meth:`fetch`, an async one :meth:`afetch`);
    ``ssl_context`` sets the default transports' trusted certificates (default: certifi's). Thread-safe.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: Resolver | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not isinstance(policy, FetchPolicy):
            raise InputError(f"policy must be a FetchPolicy, got {type(policy).__name__}")
        self.policy, self._resolver, self._closed = policy, resolver or _default_resolver, False
        sync = transport if isinstance(transport, httpx.BaseTransport) else None
        asy = transport if isinstance(transport, httpx.AsyncBaseTransport) else None
        if transport is None:
            verify, limits = ssl_context or httpx.create_ssl_context(), httpx.Limits(max_keepalive_connections=0)
            sync, asy = (
                httpx.HTTPTransport(verify=verify, limits=limits),
                httpx.AsyncHTTPTransport(verify=verify, limits=limits),
            )
        self._client = None if sync is None else httpx.Client(transport=sync, trust_env=False)
        self._aclient = None if asy is None else httpx.AsyncClient(transport=asy, trust_env=False)

    def _check(self, url: str, origin: str | None = None) -> _Target:
        target = _parse(url)
        via = f" (redirected from {origin})" if origin else ""
        if target.scheme == "http" and not self.policy.allow_http:
            raise FetchRefusedError(f"http image URLs are refused{via}: {target.url}; use https or set allow_http=True")
        if not any(rule.admits(target) for rule in self.policy._rules):
            raise FetchRefusedError(
                f"image URL {target.url}{via} is not in the fetch allowlist; to fetch it, add its host "
                f"({target.host!r}), a '*.' domain glob or a URL prefix to FetchPolicy.allow",
                url=target.url,
            )
        return target

    def _resolve(self, target: _Target) -> Any:
        """The resolver's answer, or the error to raise (returned: this may run on a thread)."""
        if target.ip is not None:
            return [str(target.ip)]
        try:
            return self._resolver(target.host, target.port)
        except Exception as exc:
            return FetchFailedError(f"cannot resolve {target.host}: {exc}", url=target.url)

    def _addresses(self, target: _Target, resolved: Any) -> list[IP]:
        """The resolver's answer, every address checked."""
        if isinstance(resolved, GRVLError):
            raise resolved
        try:
            if not isinstance(resolved, (list, tuple)) or not resolved:
                raise ValueError(f"not a list of addresses: {resolved!r}")
            ips = [ipaddress.ip_address(str(a)) for a in resolved]
        except ValueError as exc:
            raise FetchFailedError(f"resolving {target.host} gave no usable address: {exc}", url=target.url) from None
        for ip in ips:
            kind = None if self.policy.allow_private else _refusal(ip)
            if kind:
                raise FetchRefusedError(
                    f"{target.url} resolves to {ip}, a {kind} address; only public addresses are fetched "
                    "(allow_private=True lifts this)",
                    url=target.url,
                    address=str(ip),
                )
        return ips

    def _request(self, target: _Target, ip: IP, budget: _Budget, watch: _Watch | None = None) -> httpx.Request:
        """A GET of the checked address, with the name in ``Host`` and the SNI."""
        host = (f"[{target.host}]" if ":" in target.host else target.host) + (
            f":{target.port}" if target.explicit_port else ""
        )
        headers = {"Host": host, "Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "grvl-sdk"}
        extensions: dict[str, Any] = {"timeout": httpx.Timeout(budget.left()).as_dict()}
        if target.ip is None:
            extensions["sni_hostname"] = target.host
        if watch is not None:
            extensions["trace"] = watch.trace
        url = httpx.URL(scheme=target.scheme, host=str(ip), port=target.port, raw_path=target.path.encode())
        return httpx.Request("GET", url, headers=headers, extensions=extensions)

    def _next(self, target: _Target, response: httpx.Response, hops: int) -> _Target | None:
        """The redirect's target (checked), or ``None`` for a 200 whose body may be read; else raises."""
        status = response.status_code
        if status in (301, 302, 303, 307, 308) and "location" in response.headers:
            if hops >= self.policy.max_redirects:
                raise FetchFailedError(f"too many redirects (over {self.policy.max_redirects}) fetching {target.url}")
            try:
                location = urljoin(target.url, response.headers["location"])
            except ValueError as exc:
                raise FetchRefusedError(f"bad redirect from {target.url}: {exc}", url=target.url) from None
            return self._check(location, origin=target.url)
        if status != 200:
            raise FetchFailedError(f"fetching {target.url} answered HTTP {status}", url=target.url, status_code=status)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise FetchFailedError(f"{target.url} answered compressed ({encoding}) content, which is not fetched")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.policy.max_bytes:
            raise FetchFailedError(f"image over {self.policy.max_bytes} bytes (Content-Length {length}): {target.url}")
        return None

    def _add(self, body: bytearray, chunk: bytes, target: _Target, budget: _Budget) -> None:
        body += chunk
        if len(body) > self.policy.max_bytes:
            raise FetchFailedError(f"image over {self.policy.max_bytes} bytes: {target.url}", url=target.url)
        budget.left()

    def _failed(self, exc: Exception, target: _Target, budget: _Budget) -> GRVLError:
        if isinstance(exc, httpx.TimeoutException) or time.monotonic() >= budget.end:
            return budget.expired()
        return FetchFailedError(f"fetching {target.url} failed: {type(exc).__name__}: {exc}", url=target.url)

    def _budget(self, url: str, deadline: float | None, client: object, kind: str) -> _Budget:
        if self._closed:
            raise InputError("this ImageFetcher is closed")
        if client is None:
            raise InputError(f"the transport given is not {kind}: use the other method")
        return _Budget(self.policy.timeout, deadline, str(url)[:200])

    def fetch(self, url: str, *, deadline: float | None = None) -> bytes:
        """The body of ``url``, after redirects, if the policy allows it; ``deadline`` is a ``time.monotonic()``."""
        budget = self._budget(url, deadline, self._client, "a sync httpx transport")
        watch = _Watch()
        future = _POOL.submit(self._run, url, budget, watch)
        try:
            return future.result(timeout=budget.left())
        except concurrent.futures.TimeoutError:  # TimeoutError from Python 3.11
            raise budget.expired() from None
        finally:
            if not future.done():
                watch.cancel()

    def _run(self, url: str, budget: _Budget, watch: _Watch) -> bytes:
        client = self._client
        assert client is not None
        target, hops = self._check(url), 0
        while True:
            ips = self._addresses(target, self._resolve(target))
            for i, ip in enumerate(ips):  # the next address only when one does not connect
                try:
                    with contextlib.closing(client.send(self._request(target, ip, budget, watch), stream=True)) as r:
                        following = self._next(target, r, hops)
                        if following is None:
                            body = bytearray()
                            for chunk in r.iter_raw():
                                self._add(body, chunk, target, budget)
                            return bytes(body)
                    break
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    if not isinstance(exc, httpx.ConnectError) or i + 1 == len(ips):
                        raise self._failed(exc, target, budget) from None
            assert following is not None  # a redirect: a None next target returned above
            target, hops = following, hops + 1

    async def afetch(self, url: str, *, deadline: float | None = None) -> bytes:
        """:meth:`fetch` for asyncio (the resolver runs on a thread)."""
        budget = self._budget(url, deadline, self._aclient, "an async httpx transport")
        try:
            return await asyncio.wait_for(self._arun(url, budget), timeout=budget.left())
        except asyncio.TimeoutError:
            raise budget.expired() from None

    async def _arun(self, url: str, budget: _Budget) -> bytes:
        client = self._aclient
        assert client is not None
        target, hops = self._check(url), 0
        while True:
            ips = self._addresses(target, await to_daemon_thread(self._resolve, target))
            for i, ip in enumerate(ips):
                try:
                    r = await client.send(self._request(target, ip, budget), stream=True)
                    try:
                        following = self._next(target, r, hops)
                        if following is None:
                            body = bytearray()
                            async for chunk in r.aiter_raw():
                                self._add(body, chunk, target, budget)
                            return bytes(body)
                    finally:
                        await r.aclose()
                    break
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    if not isinstance(exc, httpx.ConnectError) or i + 1 == len(ips):
                        raise self._failed(exc, target, budget) from None
            assert following is not None  # a redirect: a None next target returned above
            target, hops = following, hops + 1

    def close(self) -> None:
        """Close the sync connections (:meth:`aclose` closes both); a closed fetcher refuses to fetch."""
        self._closed = True
        if self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        self.close()
        if self._aclient is not None:
            await self._aclient.aclose()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
