"""``Guard``: the public entry point.

Data flow of one check::

    input ─► prepare ─► cache? ─► (micro-batcher) ─► backend ─► parse + scores ─► policy ─► sink
             images.py  cache.py    _batching.py     backends/  parsing, scores   policy.py  events.py

The backend, parser and scores produce a *judgement* (labels, or an error); the policy turns it into
a *decision* (allow / block / error-allowed / error-blocked); the sink logs it, writes the audit line
and calls the ``on_verdict`` hooks. Wrapping VLM calls (``guard.wrap``) lives in
:mod:`grvl_sdk.middleware` on top of :meth:`Guard.check_input`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grvl_sdk._batching import MicroBatcher
from grvl_sdk._constants import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_CONTEXT_CHARS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_MIN_PIXELS,
    DEFAULT_MODEL,
    MAX_IMAGES_PER_CHECK,
    MODEL_ENV_VAR,
)
from grvl_sdk.audit import AuditLog
from grvl_sdk.backends.base import Backend, Generation, GuardInput
from grvl_sdk.cache import ContentHashes, VerdictCache, content_hashes
from grvl_sdk.conversation import conversation_input
from grvl_sdk.errors import BackendError, DeadlineExceededError, InputError, ParseError
from grvl_sdk.events import VerdictHook, VerdictSink
from grvl_sdk.images import load_images
from grvl_sdk.parsing import parse_output
from grvl_sdk.policy import Policy, PolicyLike
from grvl_sdk.scores import label_scores
from grvl_sdk.verdict import Stage, Usage, Verdict, _new_id

__all__ = ["Guard"]

logger = logging.getLogger("grvl_sdk")

_CHECK_KEYS = frozenset({"text", "image", "images", "response"})
#: Default number of inputs generated together by ``check_batch``.
DEFAULT_BATCH_SIZE = 16


def _accepts_deadline(method: Callable[..., Any]) -> bool:
    try:
        return "deadline" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


class Guard:
    """A GuardReasoner-VL guard over a backend (local transformers model, or a remote server).

    >>> guard = Guard.from_pretrained("yueliu1999/GuardReasoner-VL-Eco-3B", quantization="4bit")
    >>> verdict = guard.check("How do I pick this lock?", image="door.jpg")
    >>> verdict.request_label, verdict.harmful, verdict.decision, verdict.request_score

    Middleware options: ``policy`` (a :class:`Policy` or a dict of its fields), ``cache_size``
    (verdict LRU entries, 0 = off), ``micro_batching`` (coalesce concurrent checks; default: on for
    in-process backends) with ``max_batch_size`` and ``max_wait_ms``, ``context_chars`` (earlier turns
    given to :meth:`check_conversation`), ``audit_log`` (an :class:`AuditLog` or a path) and
    ``on_verdict`` (callbacks given every decided verdict).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        policy: PolicyLike | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        micro_batching: bool | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        context_chars: int = DEFAULT_CONTEXT_CHARS,
        audit_log: AuditLog | str | os.PathLike[str] | None = None,
        on_verdict: VerdictHook | Sequence[VerdictHook] | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if context_chars < 0:
            raise InputError(f"context_chars must be >= 0, got {context_chars}")
        self._backend = backend
        self.max_new_tokens = max_new_tokens
        self.max_image_pixels = max_image_pixels
        self.batch_size = batch_size
        self.context_chars = context_chars
        #: The guard's policy; per-call ``policy=`` arguments override it.
        self.policy: Policy = Policy().merged(policy)
        self.cache = VerdictCache(cache_size)
        if micro_batching is None:
            micro_batching = backend.prefers_micro_batching
        self._batcher: MicroBatcher | None = None
        if micro_batching:
            # The worker thread holds the guard weakly, and is stopped when the guard is collected.
            generate = weakref.WeakMethod(self._generate)

            def run(items: Sequence[GuardInput], budget: int, deadline: float | None) -> list[Generation]:
                method = generate()
                if method is None:
                    raise BackendError("the guard was garbage-collected")
                return method(items, budget, deadline)

            self._batcher = MicroBatcher(run, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
            weakref.finalize(self, self._batcher.close)
        hooks = [on_verdict] if callable(on_verdict) else list(on_verdict or ())
        self._sink = VerdictSink(audit_log, hooks)
        self._sync_deadline = _accepts_deadline(backend.generate)
        self._async_deadline = _accepts_deadline(backend.agenerate)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        quantization: str | None = None,
        dtype: Any = None,
        device: str | None = None,
        device_map: Any = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        policy: PolicyLike | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        micro_batching: bool | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        context_chars: int = DEFAULT_CONTEXT_CHARS,
        audit_log: AuditLog | str | os.PathLike[str] | None = None,
        on_verdict: VerdictHook | Sequence[VerdictHook] | None = None,
        **model_kwargs: Any,
    ) -> Guard:
        """Load a guard checkpoint locally (hub id or folder; default ``$GRVL_MODEL`` or the Eco-3B model).

        ``quantization``: ``None``, ``"4bit"`` or ``"8bit"`` (bitsandbytes). ``max_pixels`` caps the
        vision tokens per image (pixels / 784): lower is faster, higher sees more detail. The
        middleware options are those of :class:`Guard`.
        """
        from grvl_sdk.backends.local import LocalBackend

        model_id = model or os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL
        if quantization in ("none", "None", ""):
            quantization = None
        backend = LocalBackend.from_pretrained(
            model_id,
            quantization=quantization,  # type: ignore[arg-type]
            dtype=dtype,
            device=device,
            device_map=device_map,
            revision=revision,
            cache_dir=cache_dir,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            **model_kwargs,
        )
        return cls(
            backend,
            max_new_tokens=max_new_tokens,
            max_image_pixels=max_image_pixels,
            batch_size=batch_size,
            policy=policy,
            cache_size=cache_size,
            micro_batching=micro_batching,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            context_chars=context_chars,
            audit_log=audit_log,
            on_verdict=on_verdict,
        )

    @classmethod
    def from_server(
        cls,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        policy: PolicyLike | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        micro_batching: bool | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        context_chars: int = DEFAULT_CONTEXT_CHARS,
        audit_log: AuditLog | str | os.PathLike[str] | None = None,
        on_verdict: VerdictHook | Sequence[VerdictHook] | None = None,
        **backend_options: Any,
    ) -> Guard:
        """A guard served by an OpenAI-compatible server (vLLM, SGLang): ``base_url`` as for the OpenAI
        client, e.g. ``http://localhost:8000/v1``; ``model`` the served name (default ``$GRVL_MODEL`` or
        the Eco-3B id); ``api_key`` (default ``$GRVL_API_KEY``).

        ``backend_options`` go to :class:`~grvl_sdk.backends.remote.RemoteBackend` (``timeout``,
        ``max_retries``, ``backoff_base``, ``breaker_threshold``, ``max_pixels``, ``extra_body``...).
        """
        from grvl_sdk.backends.remote import RemoteBackend

        backend = RemoteBackend(
            base_url,
            model=model or os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL,
            api_key=api_key,
            **backend_options,
        )
        return cls(
            backend,
            max_new_tokens=max_new_tokens,
            max_image_pixels=max_image_pixels,
            batch_size=batch_size,
            policy=policy,
            cache_size=cache_size,
            micro_batching=micro_batching,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            context_chars=context_chars,
            audit_log=audit_log,
            on_verdict=on_verdict,
        )

    @property
    def backend(self) -> Backend:
        """The backend running the model (``guard.backend.model`` / ``.processor`` for a local one)."""
        return self._backend

    @property
    def model_id(self) -> str:
        return self._backend.model_id

    @property
    def batcher(self) -> MicroBatcher | None:
        """The micro-batcher (``batches`` / ``items`` counters), or ``None`` when micro-batching is off."""
        return self._batcher

    def add_hook(self, hook: VerdictHook) -> None:
        """Call ``hook(verdict)`` with every decided verdict (exceptions are logged and ignored)."""
        self._sink.hooks.append(hook)

    # -- input -> prompt ---------------------------------------------------------------------
    def prepare(
        self, text: str | None = None, image: Any = None, *, response: str | None = None, images: Any = None
    ) -> GuardInput:
        """Validate and load one input (images decoded, oriented, RGB)."""
        for name, value in (("text", text), ("response", response)):
            if value is not None and not isinstance(value, str):
                raise InputError(f"{name} must be a string or None, got {type(value).__name__}", field=name)
        loaded = load_images(image, images, max_image_pixels=self.max_image_pixels)
        if not text and not loaded:
            raise InputError("nothing to check: give a request text, an image, or both", field="text")
        if len(loaded) > MAX_IMAGES_PER_CHECK:
            raise InputError(
                f"{len(loaded)} images in one check; at most {MAX_IMAGES_PER_CHECK} are supported", field="images"
            )
        return GuardInput(text=text or None, response=response, images=tuple(loaded))

    def format_prompt(
        self, text: str | None = None, image: Any = None, *, response: str | None = None, images: Any = None
    ) -> str:
        """The exact prompt string given to the model (image blocks at the ``<image>`` position)."""
        return self._backend.format_prompt(self.prepare(text, image, response=response, images=images))

    # -- checks ------------------------------------------------------------------------------
    def check(
        self,
        text: str | None = None,
        image: Any = None,
        *,
        response: str | None = None,
        images: Any = None,
        max_new_tokens: int | None = None,
        policy: PolicyLike | None = None,
    ) -> Verdict:
        """Judge a request (text and/or images) and, if given, the AI's response to it.

        Never raises for a guard failure: a backend error, an unparseable output or an expired
        deadline gives a failed verdict whose ``decision`` is the policy's fail mode. Bad arguments
        raise :class:`InputError`.
        """
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        item = self.prepare(text, image, response=response, images=images)
        return self._run(item, active, budget, deadline, started)

    async def acheck(
        self,
        text: str | None = None,
        image: Any = None,
        *,
        response: str | None = None,
        images: Any = None,
        max_new_tokens: int | None = None,
        policy: PolicyLike | None = None,
    ) -> Verdict:
        """Async twin of :meth:`check`; decoding and generation run off the event loop."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        if image is None and not images:
            item = self.prepare(text, response=response)
        else:
            item = await asyncio.to_thread(self.prepare, text, image, response=response, images=images)
        return await self._arun(item, active, budget, deadline, started)

    def check_conversation(
        self,
        messages: Sequence[Any],
        *,
        policy: PolicyLike | None = None,
        context_chars: int | None = None,
        max_new_tokens: int | None = None,
    ) -> Verdict:
        """Judge the latest user turn of a chat (and the assistant's answer to it, if the chat ends
        with one), with earlier turns as context up to ``context_chars`` characters. See
        :mod:`grvl_sdk.conversation` for how a chat is reduced to one request."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        item = self.prepare_conversation(messages, context_chars=context_chars)
        return self._run(item, active, budget, deadline, started)

    async def acheck_conversation(
        self,
        messages: Sequence[Any],
        *,
        policy: PolicyLike | None = None,
        context_chars: int | None = None,
        max_new_tokens: int | None = None,
    ) -> Verdict:
        """Async twin of :meth:`check_conversation`."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        item = await asyncio.to_thread(self.prepare_conversation, messages, context_chars=context_chars)
        return await self._arun(item, active, budget, deadline, started)

    def prepare_conversation(self, messages: Sequence[Any], *, context_chars: int | None = None) -> GuardInput:
        """The ``GuardInput`` :meth:`check_conversation` judges."""
        budget = self.context_chars if context_chars is None else context_chars
        chat = conversation_input(messages, context_chars=budget)
        return self.prepare(chat.text, response=chat.response, images=chat.images)

    def check_input(
        self,
        item: GuardInput,
        *,
        policy: PolicyLike | None = None,
        max_new_tokens: int | None = None,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> Verdict:
        """Judge a prepared input (see :meth:`prepare`); ``stage`` and ``call_id`` are recorded."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        return self._run(item, active, budget, deadline, started, stage=stage, call_id=call_id)

    async def acheck_input(
        self,
        item: GuardInput,
        *,
        policy: PolicyLike | None = None,
        max_new_tokens: int | None = None,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> Verdict:
        """Async twin of :meth:`check_input`."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        return await self._arun(item, active, budget, deadline, started, stage=stage, call_id=call_id)

    def _run(
        self,
        item: GuardInput,
        policy: Policy,
        budget: int,
        deadline: float | None,
        started: float,
        *,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> Verdict:
        key, hashes, raw = self._lookup(item, budget)
        if raw is None:
            raw = self._judge(item, budget, deadline)
            if key is not None:
                self.cache.put(key, raw)
        return self._finish(raw, item, hashes, policy, started, stage=stage, call_id=call_id)

    async def _arun(
        self,
        item: GuardInput,
        policy: Policy,
        budget: int,
        deadline: float | None,
        started: float,
        *,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> Verdict:
        key, hashes, raw = self._lookup(item, budget)
        if raw is None:
            raw = await self._ajudge(item, budget, deadline)
            if key is not None:
                self.cache.put(key, raw)
        return self._finish(raw, item, hashes, policy, started, stage=stage, call_id=call_id)

    def check_batch(
        self,
        inputs: Sequence[Mapping[str, Any]],
        *,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        policy: PolicyLike | None = None,
    ) -> list[Verdict]:
        """Check many inputs (dicts of ``check``'s keyword arguments) with batched generation, in order.

        The policy's deadline covers the whole call."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        items = self._prepare_many(inputs)
        looked = [self._lookup(item, budget) for item in items]
        raws: list[Verdict | None] = [raw for _, _, raw in looked]
        missing = [i for i, raw in enumerate(raws) if raw is None]
        size = batch_size or self.batch_size
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            try:
                generations = self._generate([items[i] for i in chunk], budget, deadline)
                judged = [self._verdict(items[i], gen) for i, gen in zip(chunk, generations, strict=True)]
            except InputError:
                raise
            except Exception as exc:
                failed = self._failed(exc)
                judged = [failed.model_copy(update={"id": _new_id()}) for _ in chunk]
            self._store(chunk, judged, raws, looked)
        return [
            self._finish(raw, item, hashes, active, started, stage=None, call_id=None)  # type: ignore[arg-type]
            for raw, item, (_, hashes, _) in zip(raws, items, looked, strict=True)
        ]

    async def acheck_batch(
        self,
        inputs: Sequence[Mapping[str, Any]],
        *,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        policy: PolicyLike | None = None,
    ) -> list[Verdict]:
        """Async twin of :meth:`check_batch`."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        items = await asyncio.to_thread(self._prepare_many, inputs)
        looked = [self._lookup(item, budget) for item in items]
        raws: list[Verdict | None] = [raw for _, _, raw in looked]
        missing = [i for i, raw in enumerate(raws) if raw is None]
        size = batch_size or self.batch_size
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            try:
                generations = await self._agenerate([items[i] for i in chunk], budget, deadline)
                judged = [self._verdict(items[i], gen) for i, gen in zip(chunk, generations, strict=True)]
            except InputError:
                raise
            except Exception as exc:
                failed = self._failed(exc)
                judged = [failed.model_copy(update={"id": _new_id()}) for _ in chunk]
            self._store(chunk, judged, raws, looked)
        return [
            self._finish(raw, item, hashes, active, started, stage=None, call_id=None)  # type: ignore[arg-type]
            for raw, item, (_, hashes, _) in zip(raws, items, looked, strict=True)
        ]

    def _store(
        self,
        chunk: list[int],
        judged: list[Verdict],
        raws: list[Verdict | None],
        looked: list[tuple[str | None, ContentHashes | None, Verdict | None]],
    ) -> None:
        for index, raw in zip(chunk, judged, strict=True):
            raws[index] = raw
            key = looked[index][0]
            if key is not None:
                self.cache.put(key, raw)

    def _prepare_many(self, inputs: Sequence[Mapping[str, Any]]) -> list[GuardInput]:
        if isinstance(inputs, (str, bytes, Mapping)):
            raise InputError("check_batch takes a list of dicts like {'text': ..., 'image': ...}")
        items: list[GuardInput] = []
        for index, spec in enumerate(inputs):
            if not isinstance(spec, Mapping):
                raise InputError(f"check_batch input {index} must be a dict, got {type(spec).__name__}", index=index)
            unknown = set(spec) - _CHECK_KEYS
            if unknown:
                raise InputError(
                    f"check_batch input {index} has unknown keys {sorted(unknown)}; allowed: {sorted(_CHECK_KEYS)}",
                    index=index,
                )
            try:
                items.append(self.prepare(**spec))
            except InputError as exc:
                raise type(exc)(f"check_batch input {index}: {exc.message}", index=index, **exc.details) from exc
        return items

    # -- policy, cache, deadline -------------------------------------------------------------
    def _settings(self, policy: PolicyLike | None, max_new_tokens: int | None) -> tuple[Policy, int, float | None]:
        """(the call's policy, its generation budget, its deadline as a ``time.monotonic()`` value)."""
        active = self.policy.merged(policy)
        budget = max_new_tokens or active.max_new_tokens or self.max_new_tokens
        if budget < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {budget}")
        deadline = None if active.deadline is None else time.monotonic() + active.deadline
        return active, budget, deadline

    def _lookup(self, item: GuardInput, budget: int) -> tuple[str | None, ContentHashes | None, Verdict | None]:
        """(cache key, content hashes, cached judgement); hashing is skipped when nothing needs it."""
        if not self.cache.enabled and self._sink.audit_log is None:
            return None, None, None
        hashes = content_hashes(item)
        if not self.cache.enabled:
            return None, hashes, None
        key = hashes.key(self.model_id, self._backend.cache_settings, budget)
        hit = self.cache.get(key)
        if hit is not None:
            hit = hit.model_copy(update={"cached": True, "id": _new_id()})
        return key, hashes, hit

    def _finish(
        self,
        raw: Verdict,
        item: GuardInput,
        hashes: ContentHashes | None,
        policy: Policy,
        started: float,
        *,
        stage: Stage | None,
        call_id: str | None,
    ) -> Verdict:
        usage = raw.usage.model_copy(update={"total_ms": (time.perf_counter() - started) * 1000})
        verdict = policy.decide(raw, usage=usage, stage=stage, call_id=call_id)
        self._sink.emit(verdict, item, hashes)
        return verdict

    # -- generation --------------------------------------------------------------------------
    def _generate(self, items: Sequence[GuardInput], budget: int, deadline: float | None) -> list[Generation]:
        """Run the backend once, within the deadline (natively if the backend takes one)."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("deadline passed before generation started")
        if deadline is None:
            generations = self._backend.generate(items, max_new_tokens=budget)
        elif self._sync_deadline:
            generations = self._backend.generate(items, max_new_tokens=budget, deadline=deadline)
        else:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="grvl-deadline")
            future = self._executor.submit(self._backend.generate, items, max_new_tokens=budget)
            try:
                generations = future.result(timeout=_remaining(deadline))
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise DeadlineExceededError("no guard output within the deadline") from None
        if len(generations) != len(items):
            raise BackendError(f"the backend returned {len(generations)} outputs for {len(items)} inputs")
        return generations

    async def _agenerate(self, items: Sequence[GuardInput], budget: int, deadline: float | None) -> list[Generation]:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("deadline passed before generation started")
        if deadline is None:
            generations = await self._backend.agenerate(items, max_new_tokens=budget)
        else:
            if self._async_deadline:
                call = self._backend.agenerate(items, max_new_tokens=budget, deadline=deadline)  # type: ignore[call-arg]
            else:
                call = self._backend.agenerate(items, max_new_tokens=budget)
            try:
                generations = await asyncio.wait_for(call, _remaining(deadline))
            except asyncio.TimeoutError:
                raise DeadlineExceededError("no guard output within the deadline") from None
        if len(generations) != len(items):
            raise BackendError(f"the backend returned {len(generations)} outputs for {len(items)} inputs")
        return generations

    def _judge(self, item: GuardInput, budget: int, deadline: float | None) -> Verdict:
        try:
            if self._batcher is None:
                generation = self._generate([item], budget, deadline)[0]
            else:
                future = self._batcher.submit(item, max_new_tokens=budget, deadline=deadline)
                try:
                    generation = future.result(timeout=None if deadline is None else _remaining(deadline))
                except concurrent.futures.TimeoutError:
                    future.cancel()
                    raise DeadlineExceededError("no guard output within the deadline (queued or generating)") from None
        except InputError:
            raise
        except Exception as exc:
            return self._failed(exc)
        return self._verdict(item, generation)

    async def _ajudge(self, item: GuardInput, budget: int, deadline: float | None) -> Verdict:
        try:
            if self._batcher is None:
                generation = (await self._agenerate([item], budget, deadline))[0]
            else:
                future = asyncio.wrap_future(self._batcher.submit(item, max_new_tokens=budget, deadline=deadline))
                try:
                    generation = await asyncio.wait_for(future, None if deadline is None else _remaining(deadline))
                except asyncio.TimeoutError:
                    raise DeadlineExceededError("no guard output within the deadline (queued or generating)") from None
        except InputError:
            raise
        except Exception as exc:
            return self._failed(exc)
        return self._verdict(item, generation)

    # -- output -> verdict -------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> Verdict:
        if not isinstance(exc, (BackendError, DeadlineExceededError)):
            logger.warning("guard backend raised %s", type(exc).__name__, exc_info=exc)
        return Verdict.from_error(exc, model=self.model_id)

    def _verdict(self, item: GuardInput, generation: Generation) -> Verdict:
        common: dict[str, Any] = {
            "raw_output": generation.text,
            "model": self.model_id,
            "usage": Usage(
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                latency_ms=generation.latency_ms,
            ),
        }
        try:
            parsed = parse_output(generation.text)
        except ParseError as exc:
            if not generation.finished:
                exc = ParseError(
                    f"guard output truncated at max_new_tokens before a verdict ({exc.message})",
                    output=generation.text,
                )
            return Verdict.from_error(exc, **common)
        if item.response is not None and parsed.response_label is None:
            error = ParseError(
                "a response was given but the guard output has no response label", output=generation.text
            )
            return Verdict.from_error(error, reasoning=parsed.reasoning, **common)
        response_label = parsed.response_label if item.response is not None else None
        request_score, response_score = label_scores(generation.logprobs)
        return Verdict.from_labels(
            parsed.request_label,
            response_label,
            reasoning=parsed.reasoning,
            request_score=request_score,
            response_score=response_score if response_label is not None else None,
            **common,
        )

    # -- wrapping ----------------------------------------------------------------------------
    def wrap(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Guard a VLM call: ``guard.wrap(fn, ...)`` or ``@guard.wrap`` / ``@guard.wrap(policy=...)``.

        Works for sync and async functions and (async) generators streaming text. See
        :func:`grvl_sdk.middleware.wrap` for the options (``policy``, ``get_request``,
        ``get_response``, ``get_chunk_text``, ``refusal``).
        """
        from grvl_sdk.middleware import wrap

        if fn is None:
            return lambda function: wrap(self, function, **options)
        return wrap(self, fn, **options)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend's resources, stop the micro-batcher and close an audit log it opened."""
        if self._batcher is not None:
            self._batcher.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._backend.close()
        self._sink.close()

    async def aclose(self) -> None:
        """Async :meth:`close` (also closes a remote backend's async connections)."""
        aclose = getattr(self._backend, "aclose", None)
        if aclose is not None:
            await aclose()
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Guard(model={self.model_id!r}, backend={type(self._backend).__name__})"
