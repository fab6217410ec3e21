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
import functools
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grvl_sdk._batching import MicroBatcher, agenerate_isolated, generate_isolated
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
from grvl_sdk._threads import DaemonPool, to_daemon_thread
from grvl_sdk.audit import AuditLog
from grvl_sdk.backends.base import Backend, Generation, GuardInput
from grvl_sdk.cache import ContentHashes, VerdictCache, content_hashes
from grvl_sdk.conversation import conversation_input
from grvl_sdk.errors import (
    BackendError,
    DeadlineExceededError,
    GuardClosedError,
    InputError,
    ParseError,
)
from grvl_sdk.events import VerdictHook, VerdictSink
from grvl_sdk.images import load_images, resize_to_grid
from grvl_sdk.parsing import MAX_OUTPUT_CHARS, parse_output
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


#: Inputs with more characters than this (or any image) are prepared, hashed and logged off the event loop.
_HEAVY_CHARS = 1 << 16


def _clean_text(name: str, value: Any) -> str | None:
    """``value`` as a string that any backend can encode: lone surrogates (invalid Unicode that UTF-8
    cannot carry) become U+FFFD, valid surrogate pairs are joined. Non-strings raise ``InputError``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string or None, got {type(value).__name__}", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}", field=name)
    return value


def _is_heavy(item: GuardInput) -> bool:
    return bool(item.images) or len(item.text or "") + len(item.response or "") > _HEAVY_CHARS


def _heavy_args(text: Any, response: Any, image: Any, images: Any) -> bool:
    """Whether preparing these ``check`` arguments is CPU work worth a worker thread."""
    if image is not None or images is not None:
        return True
    return sum(len(v) for v in (text, response) if isinstance(v, str)) > _HEAVY_CHARS


def _harmful_only(request_label: str | None, response_label: str | None) -> dict[str, str | None]:
    """The labels a failed verdict keeps: only ``harmful`` ones (they block whatever the fail mode); an
    ``unharmful`` read from an unusable output is no judgement and is not shown as one."""
    return {
        "request_label": request_label if request_label == "harmful" else None,
        "response_label": response_label if response_label == "harmful" else None,
    }


def _check_item(item: Any) -> GuardInput:
    if not isinstance(item, GuardInput):
        raise InputError(f"expected a GuardInput (see Guard.prepare), got {type(item).__name__}")
    return item


def _checked_generations(generations: Any, items: Sequence[GuardInput]) -> list[Generation]:
    """The backend's outputs, or a ``BackendError`` when they are not one ``Generation`` per input."""
    if not isinstance(generations, (list, tuple)) or not all(isinstance(g, Generation) for g in generations):
        raise BackendError(f"the backend must return a list of Generation, got {type(generations).__name__}")
    if len(generations) != len(items):
        raise BackendError(f"the backend returned {len(generations)} outputs for {len(items)} inputs")
    return list(generations)


#: What a worker pool does, for deadline messages.
_DOING = {"prepare": "preparing the input (image loading, hashing)", "generate": "generating"}


async def _await_within(awaitable: Any, deadline: float | None, doing: str) -> Any:
    """Await ``awaitable`` until ``deadline``; then :class:`DeadlineExceededError`, the work cancelled
    and never waited for (a backend ignoring cancellation cannot hold the caller). A ``CancelledError``
    raised by the work itself (not by cancelling the caller) becomes a :class:`BackendError`."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=None if deadline is None else _remaining(deadline))
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task not in done:
        task.cancel()
        task.add_done_callback(_consume)
        raise DeadlineExceededError(f"deadline passed while {doing}")
    if task.cancelled():
        raise BackendError(f"the guard's work was cancelled while {doing}")
    exc = task.exception()
    if exc is not None and not isinstance(exc, Exception) and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise BackendError(f"the backend raised {type(exc).__name__}: {exc}") from exc
    return task.result()


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class _Admitted:
    """An input ready to judge: the prepared input, its cache key and hashes, and a cached judgement."""

    item: GuardInput
    key: str | None = None
    hashes: ContentHashes | None = None
    cached: Verdict | None = None


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
        _check_int("max_new_tokens", max_new_tokens, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("context_chars", context_chars, 0)
        _check_int("max_image_pixels", max_image_pixels, 1)
        _check_int("cache_size", cache_size, 0)
        _check_int("max_batch_size", max_batch_size, 1)
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or not 0 <= max_wait_ms < 60_000:
            raise InputError(f"max_wait_ms must be a number of milliseconds in [0, 60000), got {max_wait_ms!r}")
        if not isinstance(backend, Backend):
            raise InputError(f"backend must be a grvl_sdk Backend, got {type(backend).__name__}")
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
        self._executors: dict[str, DaemonPool] = {}
        self._executor_lock = threading.Lock()
        self._closed = False

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
        """Validate and load one input (images decoded, oriented, RGB).

        Text that UTF-8 cannot carry (lone surrogates) is repaired to U+FFFD, the same for every
        backend. Raises :class:`InputError` (:class:`~grvl_sdk.errors.ImageError` for images).
        """
        text = _clean_text("text", text)
        response = _clean_text("response", response)
        loaded = load_images(image, images, max_image_pixels=self.max_image_pixels)
        bounds = self._backend.image_bounds
        if bounds is not None:  # the one resize to the model's grid: the backend then changes nothing
            loaded = [resize_to_grid(im, min_pixels=bounds[0], max_pixels=bounds[1]) for im in loaded]
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
        deadline gives a failed verdict whose ``decision`` is the policy's fail mode. The policy's
        ``deadline`` covers the whole call (image loading included). Bad arguments raise
        :class:`InputError`; a closed guard raises :class:`~grvl_sdk.errors.GuardClosedError`.
        """
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        heavy = _heavy_args(text, response, image, images)
        return self._run(lambda: self.prepare(text, image, response=response, images=images), heavy,
                         active, budget, deadline, started)[0]  # fmt: skip

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
        """Async twin of :meth:`check`; image decoding, hashing, generation and the parsing of long
        outputs run off the event loop."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        heavy = _heavy_args(text, response, image, images)
        return (await self._arun(lambda: self.prepare(text, image, response=response, images=images), heavy,
                                 active, budget, deadline, started))[0]  # fmt: skip

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
        return self._run(lambda: self.prepare_conversation(messages, context_chars=context_chars), True,
                         active, budget, deadline, started)[0]  # fmt: skip

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
        return (await self._arun(lambda: self.prepare_conversation(messages, context_chars=context_chars), True,
                                 active, budget, deadline, started))[0]  # fmt: skip

    def prepare_conversation(self, messages: Sequence[Any], *, context_chars: int | None = None) -> GuardInput:
        """The ``GuardInput`` :meth:`check_conversation` judges."""
        budget = self.context_chars if context_chars is None else _check_int("context_chars", context_chars, 0)
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
        item = _check_item(item)
        return self._run(lambda: item, _is_heavy(item), active, budget, deadline, started,
                         stage=stage, call_id=call_id)[0]  # fmt: skip

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
        item = _check_item(item)
        return (await self._arun(lambda: item, _is_heavy(item), active, budget, deadline, started,
                                 stage=stage, call_id=call_id))[0]  # fmt: skip

    def _check_call(
        self, prepare: Callable[[], GuardInput], policy: Policy, *, stage: Stage, call_id: str
    ) -> tuple[Verdict, GuardInput | None]:
        """For guarded calls: prepare (within the policy's deadline) and judge; also returns the prepared
        input (``None`` when preparing ran out of time)."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, None)
        return self._run(prepare, True, active, budget, deadline, started, stage=stage, call_id=call_id)

    async def _acheck_call(
        self, prepare: Callable[[], GuardInput], policy: Policy, *, stage: Stage, call_id: str
    ) -> tuple[Verdict, GuardInput | None]:
        """Async twin of :meth:`_check_call`."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, None)
        return await self._arun(prepare, True, active, budget, deadline, started, stage=stage, call_id=call_id)

    def _run(
        self,
        prepare: Callable[[], GuardInput],
        heavy: bool,
        policy: Policy,
        budget: int,
        deadline: float | None,
        started: float,
        *,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> tuple[Verdict, GuardInput | None]:
        """prepare + cache lookup (host work, within the deadline) → judge → cache → decide → sink."""
        try:
            if deadline is None or not heavy:
                admitted = self._admit(prepare, budget)
            else:
                admitted = self._within("prepare", deadline, self._admit, prepare, budget)
        except DeadlineExceededError as exc:
            return self._finish(self._failed(exc), None, None, policy, started, stage=stage, call_id=call_id), None
        raw = admitted.cached
        if raw is None:
            raw = self._judge(admitted.item, budget, deadline)
            if admitted.key is not None:
                self.cache.put(admitted.key, raw)
        verdict = self._finish(raw, admitted.item, admitted.hashes, policy, started, stage=stage, call_id=call_id)
        return verdict, admitted.item

    async def _arun(
        self,
        prepare: Callable[[], GuardInput],
        heavy: bool,
        policy: Policy,
        budget: int,
        deadline: float | None,
        started: float,
        *,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> tuple[Verdict, GuardInput | None]:
        """Async twin of :meth:`_run`: CPU-heavy steps in worker threads, never on the event loop."""
        try:
            if heavy:
                admitted = await _await_within(to_daemon_thread(self._admit, prepare, budget), deadline, "preparing")
            else:
                admitted = self._admit(prepare, budget)
        except DeadlineExceededError as exc:
            return self._finish(self._failed(exc), None, None, policy, started, stage=stage, call_id=call_id), None
        raw = admitted.cached
        if raw is None:
            raw = await self._ajudge(admitted.item, budget, deadline)
            if admitted.key is not None:
                self.cache.put(admitted.key, raw)
        finish = functools.partial(
            self._finish, raw, admitted.item, admitted.hashes, policy, started, stage=stage, call_id=call_id
        )
        if heavy or self._sink.audit_log is not None:  # hashing for the audit line, disk writes
            return await asyncio.to_thread(finish), admitted.item
        return finish(), admitted.item

    def check_batch(
        self,
        inputs: Sequence[Mapping[str, Any]],
        *,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        policy: PolicyLike | None = None,
    ) -> list[Verdict]:
        """Check many inputs (dicts of ``check``'s keyword arguments) with batched generation, in order.

        The policy's deadline covers the whole call. An input that makes the backend fail is retried
        alone, so it fails only its own verdict."""
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        size = self.batch_size if batch_size is None else _check_int("batch_size", batch_size, 1)
        try:
            admitted = self._within("prepare", deadline, self._admit_many, inputs, budget) if deadline else \
                self._admit_many(inputs, budget)  # fmt: skip
        except DeadlineExceededError as exc:
            return [self._finish(self._failed(exc), None, None, active, started, stage=None, call_id=None)
                    for _ in range(len(inputs))]  # fmt: skip
        raws: list[Verdict | None] = [a.cached for a in admitted]
        missing = [i for i, raw in enumerate(raws) if raw is None]
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            items = [admitted[i].item for i in chunk]
            outcomes = generate_isolated(lambda part: self._generate(part, budget, deadline), items)
            self._store(chunk, items, outcomes, raws, admitted)
        return [
            self._finish(raw, a.item, a.hashes, active, started, stage=None, call_id=None)  # type: ignore[arg-type]
            for raw, a in zip(raws, admitted, strict=True)
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
        size = self.batch_size if batch_size is None else _check_int("batch_size", batch_size, 1)
        try:
            admitted = await _await_within(to_daemon_thread(self._admit_many, inputs, budget), deadline, "preparing")
        except DeadlineExceededError as exc:
            return [self._finish(self._failed(exc), None, None, active, started, stage=None, call_id=None)
                    for _ in range(len(inputs))]  # fmt: skip
        raws: list[Verdict | None] = [a.cached for a in admitted]
        missing = [i for i, raw in enumerate(raws) if raw is None]
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            items = [admitted[i].item for i in chunk]
            outcomes = await agenerate_isolated(lambda part: self._agenerate(part, budget, deadline), items)
            await asyncio.to_thread(self._store, chunk, items, outcomes, raws, admitted)
        return await asyncio.to_thread(
            lambda: [
                self._finish(raw, a.item, a.hashes, active, started, stage=None, call_id=None)  # type: ignore[arg-type]
                for raw, a in zip(raws, admitted, strict=True)
            ]
        )

    def _store(
        self,
        chunk: list[int],
        items: list[GuardInput],
        outcomes: list[Generation | Exception],
        raws: list[Verdict | None],
        admitted: list[_Admitted],
    ) -> None:
        """Turn a chunk's outcomes into judgements (a backend ``InputError`` is the caller's: raised)."""
        for index, item, outcome in zip(chunk, items, outcomes, strict=True):
            if isinstance(outcome, (InputError, GuardClosedError)):
                raise outcome
            raw = self._failed(outcome) if isinstance(outcome, BaseException) else self._verdict(item, outcome)
            raws[index] = raw
            if admitted[index].key is not None:
                self.cache.put(admitted[index].key, raw)  # type: ignore[arg-type]

    def _admit_many(self, inputs: Sequence[Mapping[str, Any]], budget: int) -> list[_Admitted]:
        if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Sequence):
            raise InputError("check_batch takes a list of dicts like {'text': ..., 'image': ...}")
        admitted: list[_Admitted] = []
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
                admitted.append(self._admit(lambda spec=spec: self.prepare(**spec), budget))
            except InputError as exc:
                raise type(exc)(f"check_batch input {index}: {exc.message}", index=index, **exc.details) from exc
        return admitted

    # -- policy, cache, deadline -------------------------------------------------------------
    def _settings(self, policy: PolicyLike | None, max_new_tokens: int | None) -> tuple[Policy, int, float | None]:
        """(the call's policy, its generation budget, its deadline as a ``time.monotonic()`` value).

        Raises :class:`GuardClosedError` on a closed guard, :class:`InputError` on bad settings."""
        self._ensure_open()
        active = self.policy.merged(policy)
        if max_new_tokens is not None:
            budget = _check_int("max_new_tokens", max_new_tokens, 1)
        else:
            budget = self.max_new_tokens if active.max_new_tokens is None else active.max_new_tokens
        deadline = None if active.deadline is None else time.monotonic() + active.deadline
        return active, budget, deadline

    def _ensure_open(self) -> None:
        if self._closed:
            raise GuardClosedError("the guard is closed: create a new Guard to check more inputs")

    def _admit(self, prepare: Callable[[], GuardInput], budget: int) -> _Admitted:
        """Prepare one input and look it up in the cache (hashing is skipped when nothing needs it)."""
        item = prepare()
        if not self.cache.enabled and self._sink.audit_log is None:
            return _Admitted(item)
        hashes = content_hashes(item)
        if not self.cache.enabled:
            return _Admitted(item, hashes=hashes)
        key = hashes.key(self.model_id, self._backend.cache_settings, budget)
        hit = self.cache.get(key)
        if hit is not None:
            hit = hit.model_copy(update={"cached": True, "id": _new_id()})
        return _Admitted(item, key, hashes, hit)

    def _finish(
        self,
        raw: Verdict,
        item: GuardInput | None,
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
    def _within(self, pool: str, deadline: float | None, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in a worker thread, given up at ``deadline``: the caller gets
        :class:`DeadlineExceededError` then, and a late result is dropped."""
        if deadline is None:
            return fn(*args, **kwargs)
        with self._executor_lock:
            self._ensure_open()
            executor = self._executors.get(pool)
            if executor is None:
                executor = self._executors[pool] = DaemonPool(f"grvl-{pool}")
        future = executor.submit(fn, *args, **kwargs)
        try:
            return future.result(timeout=_remaining(deadline))
        except concurrent.futures.TimeoutError:
            if future.done():
                raise
            future.cancel()
            raise DeadlineExceededError(f"deadline passed while {_DOING[pool]}") from None

    def _generate(self, items: Sequence[GuardInput], budget: int, deadline: float | None) -> list[Generation]:
        """Run the backend once, within the deadline (also passed to a backend that takes one)."""
        self._ensure_open()
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("deadline passed before generation started")
        kwargs: dict[str, Any] = {"max_new_tokens": budget}
        if deadline is not None and self._sync_deadline:
            kwargs["deadline"] = deadline
        try:
            generations = self._within("generate", deadline, self._backend.generate, items, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            raise
        except BaseException as exc:  # e.g. a CancelledError raised inside a backend
            raise BackendError(f"the backend raised {type(exc).__name__}: {exc}") from exc
        return _checked_generations(generations, items)

    async def _agenerate(self, items: Sequence[GuardInput], budget: int, deadline: float | None) -> list[Generation]:
        self._ensure_open()
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("deadline passed before generation started")
        kwargs: dict[str, Any] = {"max_new_tokens": budget}
        if deadline is not None and self._async_deadline:
            kwargs["deadline"] = deadline
        generations = await _await_within(self._backend.agenerate(items, **kwargs), deadline, "generating")
        return _checked_generations(generations, items)

    def _judge(self, item: GuardInput, budget: int, deadline: float | None) -> Verdict:
        try:
            if self._batcher is None:
                generation = self._generate([item], budget, deadline)[0]
            else:
                future = self._submit(item, budget, deadline)
                try:
                    generation = future.result(timeout=None if deadline is None else _remaining(deadline))
                except concurrent.futures.TimeoutError:
                    if future.done():
                        raise
                    future.cancel()
                    raise DeadlineExceededError("no guard output within the deadline (queued or generating)") from None
        except (InputError, GuardClosedError):
            raise
        except Exception as exc:
            return self._failed(exc)
        return self._verdict(item, generation)

    async def _ajudge(self, item: GuardInput, budget: int, deadline: float | None) -> Verdict:
        try:
            if self._batcher is None:
                generation = (await self._agenerate([item], budget, deadline))[0]
            else:
                future = asyncio.wrap_future(self._submit(item, budget, deadline))
                generation = await _await_within(future, deadline, "queued or generating")
        except (InputError, GuardClosedError):
            raise
        except Exception as exc:
            return self._failed(exc)
        if len(generation.text) > _HEAVY_CHARS:
            return await asyncio.to_thread(self._verdict, item, generation)
        return self._verdict(item, generation)

    def _submit(self, item: GuardInput, budget: int, deadline: float | None) -> concurrent.futures.Future[Generation]:
        assert self._batcher is not None
        try:
            return self._batcher.submit(item, max_new_tokens=budget, deadline=deadline)
        except RuntimeError as exc:  # closed meanwhile
            raise GuardClosedError(f"the guard is closed: {exc}") from exc

    # -- output -> verdict -------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> Verdict:
        if not isinstance(exc, (BackendError, DeadlineExceededError)):
            logger.warning("guard backend raised %s", type(exc).__name__, exc_info=exc)
        return Verdict.from_error(exc, model=self.model_id)

    def _verdict(self, item: GuardInput, generation: Generation) -> Verdict:
        """The judgement of one output; an output without a usable verdict gives a failed verdict that
        keeps the labels read outside the reasoning (a ``harmful`` among them still blocks)."""
        common: dict[str, Any] = {
            "raw_output": generation.text[:MAX_OUTPUT_CHARS],  # longer outputs are refused unread anyway
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
                    f"guard output cut at max_new_tokens before a verdict: {exc.message}",
                    output=exc.output,
                    request_label=exc.request_label,
                    response_label=exc.response_label,
                )
            response = exc.response_label if item.response is not None else None
            return Verdict.from_error(exc, **_harmful_only(exc.request_label, response), **common)
        if item.response is not None and parsed.response_label is None:
            error = ParseError(
                "a response was given but the guard output has no response label", output=generation.text
            )
            labels = _harmful_only(parsed.request_label, None)
            return Verdict.from_error(error, reasoning=parsed.reasoning, **labels, **common)
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
    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: every check then raises :class:`GuardClosedError`."""
        return self._closed

    def close(self) -> None:
        """Release the backend's resources, stop the micro-batcher and close an audit log it opened.

        Idempotent. Afterwards every check raises :class:`GuardClosedError`."""
        with self._executor_lock:
            if self._closed:
                return
            self._closed = True
            executors, self._executors = self._executors, {}
        if self._batcher is not None:
            self._batcher.close()
        for executor in executors.values():
            executor.shutdown()
        self._backend.close()
        self._sink.close()

    async def aclose(self) -> None:
        """Async :meth:`close` (also closes a remote backend's async connections)."""
        aclose = getattr(self._backend, "aclose", None)
        if aclose is not None and not self._closed:
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
