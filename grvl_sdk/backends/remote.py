"""The remote backend: a guard model served by any OpenAI-compatible server (vLLM, SGLang...).

Each input becomes one ``POST {base_url}/chat/completions``:

- messages: the spec's system prompt, and the transcript as content parts in order — text
  ``"Human user:\\n"``, one ``image_url`` part per image (a ``data:`` URL, lossless PNG by default),
  then the text tail — so the stock Qwen2.5-VL chat template on the server renders exactly the
  prompt the model was trained on. Images are resized on the client, once, to Qwen2.5-VL's grid
  (:func:`grvl_sdk.images.resize_to_grid` with ``min_pixels``/``max_pixels``, the rule the local
  backend applies), so the server's processor has nothing left to change and a remote guard sees
  the pixels a local one sees. An image already on the grid whose original bytes decode to exactly
  its pixels (:func:`grvl_sdk.images.original_bytes`: JPEG, PNG or WebP given as bytes or a file,
  RGB or grayscale, no EXIF rotation) is sent as those bytes, with no re-encoding;
- greedy decoding: ``temperature=0``, ``top_p=1``, ``repetition_penalty=1.0`` (vLLM/SGLang would
  otherwise apply the checkpoint's 1.05), ``max_tokens``; ``logprobs`` with ``top_logprobs`` for scores;
- user text that spells a special token (``<|im_end|>``...) gets a zero-width space after ``<|``: a
  server tokenises the rendered prompt with special tokens enabled, and the guard's input must not
  be able to close its own turn.

Resilience: one ``httpx.Client`` and one ``httpx.AsyncClient`` per event loop (closed with its loop:
``asyncio.run`` closes it on exit), with connection pooling; connect/read/write/pool timeouts, each
capped by the check's deadline, and the body read in chunks with the deadline checked between them
(httpx's read timeout is per read, so a server trickling its answer would otherwise hold a call far
past its deadline); answers over :data:`MAX_RESPONSE_BYTES` are refused; retries with exponential
back-off and full jitter on connection errors, 429 and 5xx (honouring ``Retry-After``); a circuit
breaker that stops calling a failing server for a while. Read timeouts are not retried (a slow
server is not helped by more load). Only server and transport failures count toward the breaker: a
request body that cannot be encoded is the caller's :class:`InputError`, raised before anything is
sent; a malformed answer is a :class:`RemoteBackendError` of that call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from PIL import Image

from grvl_sdk._constants import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_BREAKER_RESET_S,
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MIN_PIXELS,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    SCORE_TOP_K,
)
from grvl_sdk._threads import to_daemon_thread
from grvl_sdk.backends._loops import LoopClients
from grvl_sdk.backends._resilience import CircuitBreaker, RetryPolicy
from grvl_sdk.backends._wire import (
    MAX_RESPONSE_BYTES,
    bytes_data_url,
    check_encoding,
    data_url,
    encode_body,
    neutralise,
    parse_answer,
    retry_after,
)
from grvl_sdk.backends.base import Backend
from grvl_sdk.errors import DeadlineExceededError, GuardClosedError, InputError, RemoteBackendError
from grvl_sdk.images import original_bytes, resize_to_grid
from grvl_sdk.protocol.prompt import build_messages
from grvl_sdk.types import GREEDY, Decoding, Generation, GuardInput

__all__ = ["API_KEY_ENV_VAR", "MAX_RESPONSE_BYTES", "RemoteBackend"]

logger = logging.getLogger("grvl_sdk")

#: Environment variable read for the server's API key when none is given.
API_KEY_ENV_VAR = "GRVL_API_KEY"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: The authors' decoding (spec 2.4): the server would otherwise apply the checkpoint's 1.05.
_DECODING_DEFAULTS: dict[str, Any] = {"repetition_penalty": 1.0}


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}", field=name)


class _Retryable(Exception):
    def __init__(self, error: RemoteBackendError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class RemoteBackend(Backend):
    """Talks to an OpenAI-compatible server hosting a GuardReasoner-VL model.

    ``base_url`` is the API root as for the OpenAI client (e.g. ``http://localhost:8000/v1``);
    ``model`` the served model name. ``api_key`` is sent as a bearer token; ``None`` reads
    ``$GRVL_API_KEY``, ``""`` sends none. ``timeout`` is seconds for every phase or an ``httpx.Timeout``.
    ``min_pixels``/``max_pixels``: every image is resized to Qwen2.5-VL's grid within these bounds
    before sending, exactly as the local backend does (``max_pixels=None``: images are sent as they
    are, and the server's own bounds apply). ``send_pixel_bounds`` also sends them as
    ``mm_processor_kwargs`` (vLLM reads it; leave it off for servers that refuse unknown fields).
    ``image_format``: ``"PNG"`` (lossless) or ``"JPEG"`` at ``jpeg_quality``. ``send_original_bytes``: an
    image already on the grid whose original JPEG/PNG/WebP bytes decode to exactly its pixels
    (:func:`grvl_sdk.images.original_bytes`) is sent as those bytes instead (no encoding on the client,
    the server decodes the same pixels; the bytes keep the file's metadata, EXIF included: ``False``
    always re-encodes). ``extra_body`` fields are merged over the decoding defaults (``repetition_penalty=1.0``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
        breaker_reset_s: float = DEFAULT_BREAKER_RESET_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        score_top_k: int = SCORE_TOP_K,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        send_pixel_bounds: bool = False,
        image_format: str = "PNG",
        jpeg_quality: int = 95,
        send_original_bytes: bool = True,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise InputError(f"model must name the model served by the server (a string), got {model!r}")
        if not isinstance(image_format, str) or image_format.upper() not in ("PNG", "JPEG"):
            raise InputError(f"image_format must be 'PNG' or 'JPEG', got {image_format!r}")
        for name, value, low in (
            ("max_retries", max_retries, 0), ("breaker_threshold", breaker_threshold, 0),
            ("max_connections", max_connections, 1), ("score_top_k", score_top_k, 0), ("min_pixels", min_pixels, 1),
            ("jpeg_quality", jpeg_quality, 1),
        ):  # fmt: skip
            _check_int(name, value, low)
        if max_pixels is not None:
            _check_int("max_pixels", max_pixels, min_pixels)
        for name, number in (("backoff_base", backoff_base), ("backoff_max", backoff_max),
                             ("breaker_reset_s", breaker_reset_s)):  # fmt: skip
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number < math.inf:
                raise InputError(f"{name} must be a finite number of seconds >= 0, got {number!r}", field=name)
        if not isinstance(send_original_bytes, bool):
            raise InputError(f"send_original_bytes must be True or False, got {send_original_bytes!r}")
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise InputError(f"extra_body must be a dict, got {type(extra_body).__name__}")
        if headers is not None and not isinstance(headers, Mapping):
            raise InputError(f"headers must be a dict of strings, got {type(headers).__name__}")
        if api_key is not None and not (isinstance(api_key, str) and api_key.isascii()):
            raise InputError("api_key must be an ASCII string")  # never echoed: it is a secret
        for header, header_value in (headers or {}).items():
            if not (isinstance(header, str) and isinstance(header_value, str) and (header + header_value).isascii()):
                raise InputError(f"header {header!r} must have an ASCII string name and value")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model_id = model
        self.score_top_k = score_top_k
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.send_pixel_bounds = send_pixel_bounds
        self.image_format = image_format.upper()
        if jpeg_quality > 100:
            raise InputError(f"jpeg_quality must be 1 to 100, got {jpeg_quality}", field="jpeg_quality")
        self.jpeg_quality = jpeg_quality
        self.send_original_bytes = send_original_bytes
        self.retry = RetryPolicy(max_retries, backoff_base, backoff_max)
        self.breaker = CircuitBreaker(breaker_threshold, breaker_reset_s)
        self.extra_body = {**_DECODING_DEFAULTS, **(extra_body or {})}
        if isinstance(timeout, httpx.Timeout):
            self.timeout = timeout
        elif timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
                raise InputError(f"timeout must be a positive finite number of seconds, got {timeout!r}")
            self.timeout = httpx.Timeout(timeout)
        else:
            self.timeout = httpx.Timeout(
                connect=DEFAULT_CONNECT_TIMEOUT,
                read=DEFAULT_READ_TIMEOUT,
                write=DEFAULT_WRITE_TIMEOUT,
                pool=DEFAULT_POOL_TIMEOUT,
            )
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV_VAR)  # api_key="": none sent
        # Answers uncompressed: a compressed body is refused, so no decompression bomb can be sent back.
        self._headers = {"content-type": "application/json", "accept-encoding": "identity", **(headers or {})}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._max_connections = max_connections
        self._client = httpx.Client(headers=self._headers, limits=self._limits, transport=transport)
        self._aclients = LoopClients(
            lambda: httpx.AsyncClient(headers=self._headers, limits=self._limits, transport=async_transport)
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    @property
    def cache_settings(self) -> str:
        # PNG and original bytes give the server the same pixels; JPEG re-encoding does not, so with JPEG
        # whether originals are sent is part of the settings.
        jpeg = f":q{self.jpeg_quality}{':orig' if self.send_original_bytes else ''}"
        return f"remote:{self.base_url}:{self.min_pixels}:{self.max_pixels}:{self.image_format}" + (
            jpeg if self.image_format == "JPEG" else ""
        )

    @property
    def image_bounds(self) -> tuple[int, int] | None:
        return None if self.max_pixels is None else (self.min_pixels, self.max_pixels)

    # -- request / response ------------------------------------------------------------------
    def payload(self, item: GuardInput, max_new_tokens: int, decoding: Decoding = GREEDY) -> dict[str, Any]:
        """The JSON body sent for one input (greedy unless ``decoding`` samples; ``n`` choices)."""
        urls = [self.image_url(image) for image in item.images]
        messages = build_messages(
            neutralise(item.text),
            neutralise(item.response),
            num_images=len(urls),
            image_part=lambda i: {"type": "image_url", "image_url": {"url": urls[i]}},
        )
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "max_tokens": max_new_tokens,
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "n": decoding.n,
            "stream": False,
        }
        if decoding.top_k is not None:
            body["top_k"] = decoding.top_k
        if decoding.seed is not None:
            body["seed"] = decoding.seed
        if self.score_top_k:
            body["logprobs"] = True
            body["top_logprobs"] = self.score_top_k
        if self.send_pixel_bounds and self.image_bounds is not None and urls:
            body["mm_processor_kwargs"] = {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
        body.update(self.extra_body)
        if decoding.repetition_penalty != 1.0:
            body["repetition_penalty"] = decoding.repetition_penalty
        return body

    def image_url(self, image: Image.Image) -> str:
        """The ``data:`` URL sent for ``image``: resized to the grid (when ``max_pixels`` is set) and
        encoded as ``image_format``, or its original bytes when it needs no resize and
        :func:`~grvl_sdk.images.original_bytes` has them (``send_original_bytes``)."""
        bounds = self.image_bounds
        sent = image if bounds is None else resize_to_grid(image, min_pixels=bounds[0], max_pixels=bounds[1])
        if self.send_original_bytes and sent is image:
            original = original_bytes(image)
            if original is not None:
                return bytes_data_url(original.data, original.mime)
        return data_url(sent, self.image_format, self.jpeg_quality)

    def _timeout(self, deadline: float | None) -> httpx.Timeout:
        """The attempt's timeouts, each capped by the time left before the deadline."""
        if deadline is None:
            return self.timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError("deadline passed before the guard server answered")
        parts = {
            name: remaining if value is None else min(value, remaining)
            for name, value in (
                ("connect", self.timeout.connect),
                ("read", self.timeout.read),
                ("write", self.timeout.write),
                ("pool", self.timeout.pool),
            )
        }
        return httpx.Timeout(**parts)

    def _classify(
        self, status: int, content: bytes, headers: httpx.Headers, latency_ms: float, n: int
    ) -> list[Generation]:
        if status == 200:
            return parse_answer(status, content, latency_ms, n)
        snippet = content[:300].decode("utf-8", "replace")
        hint = ""
        if status == 404 and not self.base_url.rstrip("/").endswith("/v1"):
            hint = f"; is the '/v1' missing from base_url? The server was asked at {self.url}"
        error = RemoteBackendError(f"guard server answered HTTP {status}: {snippet}{hint}", status_code=status)
        if status in _RETRY_STATUS:
            raise _Retryable(error, retry_after(headers))
        raise error

    def _check_deadline(self, deadline: float | None, received: int) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError(f"deadline passed while the guard server was answering ({received} bytes read)")
        if received > MAX_RESPONSE_BYTES:
            raise RemoteBackendError(f"the guard server's answer is over {MAX_RESPONSE_BYTES} bytes")

    def _transport_error(self, exc: httpx.HTTPError, deadline: float | None) -> Exception:
        # A timeout is the deadline's only when the deadline is (about) reached; otherwise a phase timed
        # out on its own (connect, pool...): a transport failure, retried and counted by the breaker.
        if isinstance(exc, httpx.TimeoutException) and deadline is not None and time.monotonic() >= deadline - 0.05:
            return DeadlineExceededError(f"deadline passed waiting for the guard server ({type(exc).__name__})")
        error = RemoteBackendError(f"guard server unreachable: {type(exc).__name__}: {exc}", url=self.url)
        if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout)):
            return error  # a slow server: do not add load
        return _Retryable(error)

    def _backoff(self, retry: int, failure: _Retryable, deadline: float | None) -> float:
        wait = self.retry.delay(retry, failure.retry_after)
        if deadline is not None and time.monotonic() + wait >= deadline:
            raise DeadlineExceededError(f"deadline passed while retrying: {failure.error.message}")
        logger.info("guard server call failed (%s); retry %d in %.2f s", failure.error.message, retry + 1, wait)
        return wait

    def _settle(self, exc: BaseException) -> None:
        if isinstance(exc, DeadlineExceededError):
            self.breaker.record_neutral()
        elif isinstance(exc, RemoteBackendError) and 400 <= int(exc.details.get("status_code") or 0) < 500:
            self.breaker.record_success()  # the server is up; the request was refused
        else:
            self.breaker.record_failure()

    # -- sync --------------------------------------------------------------------------------
    def _send(self, content: bytes, deadline: float | None, n: int) -> list[Generation]:
        """One attempt: the request, then the body read chunk by chunk within the deadline."""
        timeout = self._timeout(deadline)
        started = time.perf_counter()
        try:
            with self._client.stream("POST", self.url, content=content, timeout=timeout) as response:
                check_encoding(response)
                chunks: list[bytes] = []
                received = 0
                for chunk in response.iter_bytes():  # identity only: see _check_encoding
                    chunks.append(chunk)
                    received += len(chunk)
                    self._check_deadline(deadline, received)
                status, headers = response.status_code, response.headers
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, deadline) from exc
        return self._classify(status, b"".join(chunks), headers, (time.perf_counter() - started) * 1000, n)

    def _post(self, content: bytes, deadline: float | None, n: int = 1) -> list[Generation]:
        self.breaker.before_call()
        retry = 0
        try:
            while True:
                try:
                    generation = self._send(content, deadline, n)
                except _Retryable as failure:
                    if retry >= self.retry.max_retries:
                        raise failure.error from failure
                    time.sleep(self._backoff(retry, failure, deadline))
                    retry += 1
                    continue
                self.breaker.record_success()
                return generation
        except BaseException as exc:
            self._settle(exc)
            raise

    def _bodies(self, inputs: Sequence[GuardInput], max_new_tokens: int, decoding: Decoding) -> list[bytes]:
        if self._closed:
            raise GuardClosedError("the remote backend is closed")
        return [encode_body(self.payload(item, max_new_tokens, decoding)) for item in inputs]

    def generate(
        self,
        inputs: Sequence[GuardInput],
        *,
        max_new_tokens: int,
        deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:
        """One request per input (``n`` choices each); a batch is sent concurrently over the pool.
        ``decoding.tier == "fast"``: assistant-prefix continuations with ``max_tokens=1`` and
        ``logprobs`` (:mod:`grvl_sdk.backends._fast_remote`; a server that cannot do them raises
        :class:`~grvl_sdk.errors.FastModeUnsupportedError`)."""
        if decoding.tier == "fast":
            from grvl_sdk.backends._fast_remote import fast_generate_one

            if self._closed:
                raise GuardClosedError("the remote backend is closed")
            if len(inputs) <= 1:
                return [fast_generate_one(self, item, deadline) for item in inputs]
            return list(self._worker_pool().map(lambda item: fast_generate_one(self, item, deadline), inputs))
        bodies = self._bodies(inputs, max_new_tokens, decoding)
        if len(bodies) <= 1:
            return [g for body in bodies for g in self._post(body, deadline, decoding.n)]
        results = self._worker_pool().map(lambda body: self._post(body, deadline, decoding.n), bodies)
        return [g for generations in results for g in generations]

    def _worker_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._max_connections, thread_name_prefix="grvl-remote")
            return self._pool

    # -- async -------------------------------------------------------------------------------
    async def _asend(
        self, client: httpx.AsyncClient, content: bytes, deadline: float | None, n: int
    ) -> list[Generation]:
        timeout = self._timeout(deadline)
        started = time.perf_counter()
        try:
            async with client.stream("POST", self.url, content=content, timeout=timeout) as response:
                check_encoding(response)
                chunks: list[bytes] = []
                received = 0
                async for chunk in response.aiter_bytes():  # identity only: see _check_encoding
                    chunks.append(chunk)
                    received += len(chunk)
                    self._check_deadline(deadline, received)
                status, headers = response.status_code, response.headers
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, deadline) from exc
        body = b"".join(chunks)
        latency_ms = (time.perf_counter() - started) * 1000
        if len(body) > 1 << 20:  # parsing a large answer is CPU work: off the event loop
            return await asyncio.to_thread(self._classify, status, body, headers, latency_ms, n)
        return self._classify(status, body, headers, latency_ms, n)

    async def _apost(self, content: bytes, deadline: float | None, n: int = 1) -> list[Generation]:
        self.breaker.before_call()
        retry = 0
        try:
            client = await self._aclients.get()
            while True:
                try:
                    generation = await self._asend(client, content, deadline, n)
                except _Retryable as failure:
                    if retry >= self.retry.max_retries:
                        raise failure.error from failure
                    await asyncio.sleep(self._backoff(retry, failure, deadline))
                    retry += 1
                    continue
                self.breaker.record_success()
                return generation
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                self.breaker.record_neutral()
            else:
                self._settle(exc)
            raise

    async def agenerate(
        self,
        inputs: Sequence[GuardInput],
        *,
        max_new_tokens: int,
        deadline: float | None = None,
        decoding: Decoding = GREEDY,
    ) -> list[Generation]:
        """Async twin of :meth:`generate` (native ``httpx.AsyncClient``, requests sent concurrently; the
        fast tier runs :meth:`generate` on a worker thread)."""
        if decoding.tier == "fast":
            return await to_daemon_thread(
                self.generate, inputs, max_new_tokens=max_new_tokens, deadline=deadline, decoding=decoding
            )
        if any(item.images for item in inputs):  # image encoding is CPU work: keep it off the event loop
            bodies = await asyncio.to_thread(self._bodies, inputs, max_new_tokens, decoding)
        else:
            bodies = self._bodies(inputs, max_new_tokens, decoding)
        results = await asyncio.gather(*(self._apost(body, deadline, decoding.n) for body in bodies))
        return [g for generations in results for g in generations]

    def list_models(self, *, timeout: float = 5.0) -> list[str]:
        """The model names the server serves (``GET {base_url}/models``): a quick reachability check.

        Raises :class:`RemoteBackendError` when the server cannot be reached or answers badly (with a
        hint when ``/v1`` seems missing from ``base_url``)."""
        try:
            response = self._client.get(f"{self.base_url}/models", timeout=timeout)
        except httpx.HTTPError as exc:
            raise RemoteBackendError(
                f"guard server unreachable at {self.base_url}: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code != 200:
            hint = "; is the '/v1' missing from base_url?" if response.status_code == 404 else ""
            raise RemoteBackendError(
                f"guard server at {self.base_url} answered HTTP {response.status_code} to GET /models{hint}",
                status_code=response.status_code,
            )
        try:
            return [str(item["id"]) for item in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteBackendError(f"malformed model list from the guard server: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the sync client, the worker pool and every event loop's async client (idempotent; see
        :class:`~grvl_sdk.backends._loops.LoopClients`). Afterwards calls raise
        :class:`~grvl_sdk.errors.GuardClosedError`."""
        self._closed = True
        self._client.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._aclients.close()

    async def aclose(self) -> None:
        """Close the async client of the running event loop, and everything :meth:`close` closes."""
        await self._aclients.aclose_current()
        self.close()
