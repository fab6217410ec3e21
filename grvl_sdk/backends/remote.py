"""The remote backend: a guard model served by any OpenAI-compatible server (vLLM, SGLang...).

Each input becomes one ``POST {base_url}/chat/completions``:

- messages: the spec's system prompt, and the transcript as content parts in order — text
  ``"Human user:\\n"``, one ``image_url`` part per image (a ``data:`` URL, lossless PNG by default),
  then the text tail — so the stock Qwen2.5-VL chat template on the server renders exactly the
  prompt the model was trained on;
- greedy decoding: ``temperature=0``, ``top_p=1``, ``repetition_penalty=1.0`` (vLLM/SGLang would
  otherwise apply the checkpoint's 1.05), ``max_tokens``; ``logprobs`` with ``top_logprobs`` for scores;
- user text that spells a special token (``<|im_end|>``...) gets a zero-width space after ``<|``: a
  server tokenises the rendered prompt with special tokens enabled, and the guard's input must not
  be able to close its own turn.

Resilience: one ``httpx.Client`` and one ``httpx.AsyncClient`` per event loop, with connection
pooling; connect/read/write/pool timeouts, each capped by the check's deadline; retries with
exponential back-off and full jitter on connection errors, 429 and 5xx (honouring ``Retry-After``);
a circuit breaker that stops calling a failing server for a while. Read timeouts are not retried (a
slow server is not helped by more load).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import threading
import time
import weakref
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
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    RESULT_CLOSE,
    SCORE_TOP_K,
)
from grvl_sdk.backends._resilience import CircuitBreaker, RetryPolicy
from grvl_sdk.backends.base import Backend, Generation, GuardInput
from grvl_sdk.errors import DeadlineExceededError, InputError, RemoteBackendError
from grvl_sdk.prompt import build_messages
from grvl_sdk.scores import TokenLogprobs

__all__ = ["API_KEY_ENV_VAR", "RemoteBackend"]

logger = logging.getLogger("grvl_sdk")

#: Environment variable read for the server's API key when none is given.
API_KEY_ENV_VAR = "GRVL_API_KEY"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_SPECIAL = re.compile(r"<\|(?=[A-Za-z0-9_]+\|>)")


def _neutralise(text: str | None) -> str | None:
    return None if text is None else _SPECIAL.sub("<\u200b|", text)


def _data_url(image: Image.Image, image_format: str, max_pixels: int | None) -> str:
    if max_pixels is not None and image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if image_format == "PNG":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=95)
    return f"data:image/{image_format.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


class _Retryable(Exception):
    def __init__(self, error: RemoteBackendError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class RemoteBackend(Backend):
    """Talks to an OpenAI-compatible server hosting a GuardReasoner-VL model.

    ``base_url`` is the API root as for the OpenAI client (e.g. ``http://localhost:8000/v1``);
    ``model`` the served model name. ``timeout`` is seconds for every phase or an ``httpx.Timeout``.
    ``max_pixels`` shrinks larger images before sending (``None``: send as they are).
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
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        image_format: str = "PNG",
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not model:
            raise InputError("model must name the model served by the server")
        if image_format.upper() not in ("PNG", "JPEG"):
            raise InputError(f"image_format must be 'PNG' or 'JPEG', got {image_format!r}")
        if max_connections < 1 or score_top_k < 0:
            raise InputError("max_connections must be >= 1 and score_top_k >= 0")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model_id = model
        self.score_top_k = score_top_k
        self.max_pixels = max_pixels
        self.image_format = image_format.upper()
        self.retry = RetryPolicy(max_retries, backoff_base, backoff_max)
        self.breaker = CircuitBreaker(breaker_threshold, breaker_reset_s)
        self.extra_body = {"repetition_penalty": 1.0} if extra_body is None else dict(extra_body)
        if isinstance(timeout, httpx.Timeout):
            self.timeout = timeout
        elif timeout is not None:
            self.timeout = httpx.Timeout(timeout)
        else:
            self.timeout = httpx.Timeout(
                connect=DEFAULT_CONNECT_TIMEOUT,
                read=DEFAULT_READ_TIMEOUT,
                write=DEFAULT_WRITE_TIMEOUT,
                pool=DEFAULT_POOL_TIMEOUT,
            )
        key = api_key or os.environ.get(API_KEY_ENV_VAR)
        self._headers = {"content-type": "application/json", **(headers or {})}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._max_connections = max_connections
        self._client = httpx.Client(headers=self._headers, limits=self._limits, transport=transport)
        self._async_transport = async_transport
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def cache_settings(self) -> str:
        return f"remote:{self.base_url}:{self.max_pixels}:{self.image_format}"

    # -- request / response ------------------------------------------------------------------
    def payload(self, item: GuardInput, max_new_tokens: int) -> dict[str, Any]:
        """The JSON body sent for one input."""
        urls = [_data_url(image, self.image_format, self.max_pixels) for image in item.images]
        messages = build_messages(
            _neutralise(item.text),
            _neutralise(item.response),
            num_images=len(urls),
            image_part=lambda i: {"type": "image_url", "image_url": {"url": urls[i]}},
        )
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            "top_p": 1.0,
            "n": 1,
            "stream": False,
        }
        if self.score_top_k:
            body["logprobs"] = True
            body["top_logprobs"] = self.score_top_k
        body.update(self.extra_body)
        return body

    @staticmethod
    def _logprobs(choice: Mapping[str, Any]) -> TokenLogprobs | None:
        entries = (choice.get("logprobs") or {}).get("content")
        if not entries:
            return None
        tokens = tuple(str(entry["token"]) for entry in entries)

        def alternatives(step: int) -> dict[str, float]:
            entry = entries[step]
            found = {
                str(alt["token"]): float(alt["logprob"])
                for alt in entry.get("top_logprobs") or ()
                if alt.get("logprob") is not None  # some servers write -inf as null
            }
            if entry.get("logprob") is not None:
                found.setdefault(str(entry["token"]), float(entry["logprob"]))
            return found

        return TokenLogprobs(tokens=tokens, alternatives=alternatives)

    def _generation(self, response: httpx.Response, latency_ms: float) -> Generation:
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"].get("content") or ""
            usage = body.get("usage") or {}
            logprobs = self._logprobs(choice)
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise RemoteBackendError(
                f"malformed chat completion from the guard server: {type(exc).__name__}: {exc}",
                status_code=response.status_code,
            ) from exc
        if RESULT_CLOSE in text:
            text = text[: text.index(RESULT_CLOSE) + len(RESULT_CLOSE)]
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_ms=latency_ms,
            finished=choice.get("finish_reason") != "length",
            logprobs=logprobs,
        )

    def _timeout(self, deadline: float | None) -> tuple[httpx.Timeout, bool]:
        """The attempt's timeouts, capped by the deadline; and whether the deadline is the binding cap."""
        if deadline is None:
            return self.timeout, False
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
        return httpx.Timeout(**parts), self.timeout.read is None or remaining < self.timeout.read

    def _classify(self, response: httpx.Response, latency_ms: float) -> Generation:
        status = response.status_code
        if status == 200:
            return self._generation(response, latency_ms)
        snippet = response.text[:300]
        error = RemoteBackendError(f"guard server answered HTTP {status}: {snippet}", status_code=status)
        if status in _RETRY_STATUS:
            raise _Retryable(error, _retry_after(response))
        raise error

    def _transport_error(self, exc: httpx.HTTPError, capped: bool) -> Exception:
        if isinstance(exc, httpx.TimeoutException) and capped:
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
    def _post(self, body: dict[str, Any], deadline: float | None) -> Generation:
        self.breaker.before_call()
        retry = 0
        try:
            while True:
                timeout, capped = self._timeout(deadline)
                started = time.perf_counter()
                try:
                    try:
                        response = self._client.post(self.url, json=body, timeout=timeout)
                    except httpx.HTTPError as exc:
                        raise self._transport_error(exc, capped) from exc
                    generation = self._classify(response, (time.perf_counter() - started) * 1000)
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

    def generate(
        self, inputs: Sequence[GuardInput], *, max_new_tokens: int, deadline: float | None = None
    ) -> list[Generation]:
        """One request per input; a batch is sent concurrently over the connection pool."""
        bodies = [self.payload(item, max_new_tokens) for item in inputs]
        if len(bodies) <= 1:
            return [self._post(body, deadline) for body in bodies]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._max_connections, thread_name_prefix="grvl-remote")
        return list(self._pool.map(lambda body: self._post(body, deadline), bodies))

    # -- async -------------------------------------------------------------------------------
    def _aclient(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = httpx.AsyncClient(headers=self._headers, limits=self._limits, transport=self._async_transport)
            self._aclients[loop] = client
        return client

    async def _apost(self, body: dict[str, Any], deadline: float | None) -> Generation:
        self.breaker.before_call()
        client = self._aclient()
        retry = 0
        try:
            while True:
                timeout, capped = self._timeout(deadline)
                started = time.perf_counter()
                try:
                    try:
                        response = await client.post(self.url, json=body, timeout=timeout)
                    except httpx.HTTPError as exc:
                        raise self._transport_error(exc, capped) from exc
                    generation = self._classify(response, (time.perf_counter() - started) * 1000)
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
        self, inputs: Sequence[GuardInput], *, max_new_tokens: int, deadline: float | None = None
    ) -> list[Generation]:
        """Async twin of :meth:`generate` (native ``httpx.AsyncClient``, requests sent concurrently)."""
        if any(item.images for item in inputs):  # image encoding is CPU work: keep it off the event loop
            bodies = await asyncio.to_thread(lambda: [self.payload(item, max_new_tokens) for item in inputs])
        else:
            bodies = [self.payload(item, max_new_tokens) for item in inputs]
        return list(await asyncio.gather(*(self._apost(body, deadline) for body in bodies)))

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the sync client and the worker pool (async clients: :meth:`aclose`)."""
        self._client.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    async def aclose(self) -> None:
        """Close the async client of the running event loop, and everything :meth:`close` closes."""
        client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()
