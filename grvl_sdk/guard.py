"""``Guard``: the public entry point — build a guard, check inputs, guard calls.

Data flow of one check (the execution lives in :mod:`grvl_sdk.engine`)::

    input ─► prepare ─► cache? ─► backend stack ─► parse + scores ─► policy ─► sink
             images.py  cache.py   backends/       protocol/, scores  policy.py  events.py

Guarding model calls: :meth:`Guard.call` (the call flow adapters drive) and :meth:`Guard.wrap` (a
decorator over it).
"""

from __future__ import annotations

import functools
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import Unpack

from grvl_sdk._constants import DEFAULT_MODEL, MAX_IMAGES_PER_CHECK, MODEL_ENV_VAR
from grvl_sdk.backends.base import Backend, adapt
from grvl_sdk.backends.batching import MicroBatched, MicroBatcher
from grvl_sdk.backends.bounded import Bounded, await_within, run_within
from grvl_sdk.cache import VerdictCache
from grvl_sdk.conversation import conversation_input
from grvl_sdk.engine import HEAVY_CHARS, Admitted, Engine, is_heavy
from grvl_sdk.errors import DeadlineExceededError, InputError
from grvl_sdk.events import VerdictHook, VerdictSink
from grvl_sdk.images import load_images
from grvl_sdk.options import GuardOptions, GuardOptionsKwargs
from grvl_sdk.policy import Policy, PolicyLike
from grvl_sdk.protocol.prompt import neutralize_tags
from grvl_sdk.tiers import TierSettings
from grvl_sdk.types import GuardInput
from grvl_sdk.verdict import Stage, Verdict

if TYPE_CHECKING:
    from grvl_sdk.calls import GuardedCall

__all__ = ["Guard"]

_CHECK_KEYS = frozenset({"text", "image", "images", "response"})
#: Micro-batching settings: a derived guard (``with_options``) keeps the batcher when these are unchanged.
_BATCHING = ("micro_batching", "max_batch_size", "max_wait_ms")


def _clean_text(name: str, value: Any) -> str | None:
    """``value`` as a string any backend can encode and the model cannot mistake for its own output
    protocol: lone surrogates (invalid Unicode that UTF-8 cannot carry) become U+FFFD, valid surrogate
    pairs are joined, ``<think>``/``<result>`` tags are broken (:func:`neutralize_tags`). Non-strings
    raise ``InputError``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string or None, got {type(value).__name__}", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return neutralize_tags(value)


def _heavy_args(text: Any, response: Any, image: Any, images: Any) -> bool:
    """Whether preparing these ``check`` arguments is CPU work worth a worker thread."""
    if image is not None or images is not None:
        return True
    return sum(len(v) for v in (text, response) if isinstance(v, str)) > HEAVY_CHARS


def _check_item(item: Any) -> GuardInput:
    if not isinstance(item, GuardInput):
        raise InputError(f"expected a GuardInput (see Guard.prepare), got {type(item).__name__}")
    return item


class Guard:
    """A GuardReasoner-VL guard over a backend (local transformers model, or a remote server).

    >>> guard = Guard.from_pretrained("yueliu1999/GuardReasoner-VL-Eco-3B", quantization="4bit")
    >>> verdict = guard.check("How do I pick this lock?", image="door.jpg")
    >>> verdict.request_label, verdict.harmful, verdict.decision, verdict.request_score

    Options (keyword arguments, or ``options=GuardOptions(...)``; see :class:`~grvl_sdk.options.GuardOptions`):
    ``max_new_tokens``, ``max_image_pixels``, ``batch_size``, ``policy`` (a :class:`Policy` or a dict of
    its fields), ``cache_size``, ``micro_batching`` with ``max_batch_size`` and ``max_wait_ms``,
    ``context_chars``, ``audit_log`` (an :class:`~grvl_sdk.audit.AuditLog` or a path) and
    ``on_verdict`` (callbacks given every decided verdict). Raises :class:`InputError` on bad options.
    """

    def __init__(
        self, backend: Backend, *, options: GuardOptions | None = None, **kwargs: Unpack[GuardOptionsKwargs]
    ) -> None:
        if options is not None and not isinstance(options, GuardOptions):
            raise InputError(f"options must be a GuardOptions, got {type(options).__name__}")
        opts = (options or GuardOptions()).merged(dict(kwargs)) if kwargs else (options or GuardOptions())
        raw = adapt(backend)
        stack, batched = self._stack(raw, opts)
        sink = VerdictSink(opts.audit_log, list(opts.on_verdict))
        self._setup(raw, opts, stack, batched, VerdictCache(opts.cache_size), sink, parent=None)

    @staticmethod
    def _stack(raw: Backend, opts: GuardOptions) -> tuple[Backend, MicroBatched | None]:
        """The backend stack: deadlines enforced from outside, micro-batching when on."""
        inner = Bounded(raw)
        micro = opts.micro_batching if opts.micro_batching is not None else raw.prefers_micro_batching
        if not micro:
            return inner, None
        batched = MicroBatched(inner, max_batch_size=opts.max_batch_size, max_wait_ms=opts.max_wait_ms)
        return Bounded(batched, name="grvl-call"), batched

    def _setup(
        self,
        raw: Backend,
        opts: GuardOptions,
        stack: Backend,
        batched: MicroBatched | None,
        cache: VerdictCache,
        sink: VerdictSink,
        *,
        parent: Guard | None,
    ) -> None:
        self._backend = raw
        self._options = opts
        self._batched = batched
        self._parent = parent
        self._engine: Engine = Engine(
            stack, cache=cache, sink=sink, model_id=raw.model_id, tiers=TierSettings.from_options(opts),
            speed=parent._engine.speed if parent is not None else None,
        )  # fmt: skip
        self._owned: list[Callable[[], None]] = []
        self._fetcher: Any = None
        if batched is not None and (parent is None or batched is not parent._batched):
            # The batcher's worker holds no reference to the guard: stop it when the guard is collected.
            self._owned.append(weakref.finalize(self, batched.batcher.close))
        if parent is None or sink is not parent._engine.sink:
            self._owned.append(sink.close)

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
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        compile: Any = False,
        options: GuardOptions | None = None,
        **kwargs: Any,
    ) -> Guard:
        """Load a guard checkpoint locally (hub id or folder; default ``$GRVL_MODEL`` or the Eco-3B model).

        ``quantization``: ``None``, ``"4bit"`` or ``"8bit"`` (bitsandbytes). ``min_pixels``/``max_pixels``
        bound each image's pixels (vision tokens = pixels / 784; defaults in :mod:`grvl_sdk._constants`):
        lower is faster, higher sees more detail. ``compile``: ``True`` (or a
        :class:`~grvl_sdk.backends.compiled.CompileSettings`) decodes greedy checks with a static KV cache
        and a ``torch.compile``-d decode step, compiled at load (:mod:`grvl_sdk.backends.compiled`); default
        eager. Guard options (:class:`GuardOptions` fields) are taken as keyword arguments; other keyword
        arguments go to transformers' ``from_pretrained`` (e.g. ``attn_implementation``). Raises
        :class:`~grvl_sdk.errors.ModelLoadError` (:class:`~grvl_sdk.errors.CompileUnsupportedError` when
        ``compile`` cannot work here), :class:`InputError`.
        """
        from grvl_sdk.backends.local import LocalBackend

        guard_kwargs, model_kwargs = _split_options(kwargs)
        opts = (options or GuardOptions()).merged(guard_kwargs)  # validated before loading anything
        pixels: dict[str, Any] = {
            k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None
        }
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
            compile=compile,
            **pixels,
            **model_kwargs,
        )
        return cls(backend, options=opts)

    @classmethod
    def from_server(
        cls,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        options: GuardOptions | None = None,
        **kwargs: Any,
    ) -> Guard:
        """A guard served by an OpenAI-compatible server (vLLM, SGLang): ``base_url`` as for the OpenAI
        client, e.g. ``http://localhost:8000/v1``; ``model`` the served name (default ``$GRVL_MODEL`` or
        the Eco-3B id); ``api_key`` (default ``$GRVL_API_KEY``).

        Guard options (:class:`GuardOptions` fields) are taken as keyword arguments; the others go to
        :class:`~grvl_sdk.backends.remote.RemoteBackend` (``timeout``, ``max_retries``, ``backoff_base``,
        ``breaker_threshold``, ``min_pixels``, ``max_pixels``, ``extra_body``...).
        """
        from grvl_sdk.backends.remote import RemoteBackend

        guard_kwargs, backend_kwargs = _split_options(kwargs)
        opts = (options or GuardOptions()).merged(guard_kwargs)
        model_name = model or os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL
        backend = RemoteBackend(base_url, model=model_name, api_key=api_key, **backend_kwargs)
        return cls(backend, options=opts)

    def with_options(self, **changes: Any) -> Guard:
        """A guard with some options changed that shares this guard's backend, and its micro-batcher
        and cache (and audit log and hooks) when the options behind them are unchanged. Closing it
        releases only what it does not share; closing this guard closes the shared backend for both."""
        self._engine.ensure_open()
        opts = self._options.merged(changes)
        same = [name for name in _BATCHING if getattr(opts, name) == getattr(self._options, name)]
        stack, batched = (
            (self._engine.stack, self._batched) if len(same) == len(_BATCHING) else self._stack(self._backend, opts)
        )
        cache = self._engine.cache if opts.cache_size == self._options.cache_size else VerdictCache(opts.cache_size)
        sink = self._engine.sink
        if opts.audit_log is not self._options.audit_log or opts.on_verdict != self._options.on_verdict:
            sink = VerdictSink(opts.audit_log, list(opts.on_verdict))
        derived = object.__new__(Guard)
        derived._setup(self._backend, opts, stack, batched, cache, sink, parent=self)
        return derived

    # -- properties ------------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """The backend running the model (``guard.backend.model`` / ``.processor`` for a local one)."""
        inner = self._backend
        return getattr(inner, "inner", inner) if type(inner).__name__ == "_Legacy" else inner

    @property
    def options(self) -> GuardOptions:
        """This guard's options (frozen; derive others with :meth:`with_options`)."""
        return self._options

    @property
    def policy(self) -> Policy:
        """The guard's policy; per-call ``policy=`` arguments override it."""
        return self._options.policy

    @property
    def model_id(self) -> str:
        return self._backend.model_id

    @property
    def max_new_tokens(self) -> int:
        return self._options.max_new_tokens

    @property
    def batch_size(self) -> int:
        return self._options.batch_size

    @property
    def context_chars(self) -> int:
        return self._options.context_chars

    @property
    def max_image_pixels(self) -> int:
        return self._options.max_image_pixels

    @property
    def cache(self) -> VerdictCache:
        """The verdict cache (``hits``/``misses`` counters, ``clear()``)."""
        return self._engine.cache

    @property
    def batcher(self) -> MicroBatcher | None:
        """The micro-batcher (``batches`` / ``items`` counters), or ``None`` when micro-batching is off."""
        return None if self._batched is None else self._batched.batcher

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: every check then raises :class:`~grvl_sdk.errors.GuardClosedError`."""
        return self._engine.closed

    def add_hook(self, hook: VerdictHook) -> None:
        """Call ``hook(verdict)`` with every decided verdict (exceptions are logged and ignored)."""
        self._engine.sink.hooks.append(hook)

    # -- input -> prompt ---------------------------------------------------------------------
    def prepare(
        self, text: str | None = None, image: Any = None, *, response: str | None = None, images: Any = None
    ) -> GuardInput:
        """Validate and load one input: images decoded, oriented, 8-bit RGB and resized once to the
        model's grid. A request (text and/or images) is needed unless a response is given (then the
        response alone is judged). Text that UTF-8 cannot carry (lone surrogates) is repaired to U+FFFD,
        the same for every backend. Raises :class:`InputError` (:class:`~grvl_sdk.errors.ImageError`)."""
        text = _clean_text("text", text)
        response = _clean_text("response", response)
        image, images = self._fetch_remote(image), self._fetch_remote(images)
        # the one resize, to the model's grid, done while loading (smart_resize is not idempotent: once only)
        bounds = self._backend.image_bounds
        loaded = load_images(image, images, max_image_pixels=self.max_image_pixels, grid=bounds)
        if len(loaded) > MAX_IMAGES_PER_CHECK:
            raise InputError(
                f"{len(loaded)} images in one check; at most {MAX_IMAGES_PER_CHECK} are supported", field="images"
            )
        if not text and not loaded and response is None:
            raise InputError("nothing to check: give a request text, an image, a response, or several", field="text")
        return GuardInput(text=text or None, response=response, images=tuple(loaded))

    def _fetch_remote(self, source: Any) -> Any:
        """``source`` (an image or a list of images) with remote image URLs replaced by their bytes,
        fetched within the ``image_fetch`` policy; without one, a clear ``InputError``."""
        from grvl_sdk.messages import RemoteImage

        if isinstance(source, (list, tuple)):
            return [self._fetch_remote(one) for one in source]
        url = source.url if isinstance(source, RemoteImage) else source
        if not (isinstance(url, str) and url[:8].lower().startswith(("http://", "https://"))):
            return source
        policy = self._options.image_fetch
        if policy is None:
            raise InputError(
                f"image URL {url[:200]!r}: the guard fetches no remote image unless allowed; allow it with "
                "Guard(image_fetch=FetchPolicy(allow=[...])) (see grvl_sdk.fetch), or download it and pass its "
                "bytes or a data: URL",
                field="images",
            )
        from grvl_sdk.fetch import ImageFetcher

        if self._fetcher is None:
            self._fetcher = ImageFetcher(policy)
        return self._fetcher.fetch(url)

    def prepare_conversation(self, messages: Sequence[Any], *, context_chars: int | None = None) -> GuardInput:
        """The ``GuardInput`` :meth:`check_conversation` judges."""
        if context_chars is None:
            context_chars = self.context_chars
        elif isinstance(context_chars, bool) or not isinstance(context_chars, int) or context_chars < 0:
            raise InputError(f"context_chars must be an integer >= 0, got {context_chars!r}")
        chat = conversation_input(messages, context_chars=context_chars)
        return self.prepare(chat.text, response=chat.response, images=chat.images)

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
        """Judge a request (text and/or images) and, if given, the AI's response to it — or a response alone.

        Never raises for a guard failure: a backend error, an unparseable output or an expired
        deadline gives a failed verdict whose ``decision`` is the policy's fail mode. The policy's
        ``deadline`` covers the whole call (image loading included). Raises :class:`InputError` for bad
        arguments and :class:`~grvl_sdk.errors.GuardClosedError` on a closed guard.
        """

        def prepare() -> GuardInput:
            return self.prepare(text, image, response=response, images=images)

        return self._run(prepare, _heavy_args(text, response, image, images), policy, max_new_tokens)[0]

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

        def prepare() -> GuardInput:
            return self.prepare(text, image, response=response, images=images)

        return (await self._arun(prepare, _heavy_args(text, response, image, images), policy, max_new_tokens))[0]

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

        def prepare() -> GuardInput:
            return self.prepare_conversation(messages, context_chars=context_chars)

        return self._run(prepare, True, policy, max_new_tokens)[0]

    async def acheck_conversation(
        self,
        messages: Sequence[Any],
        *,
        policy: PolicyLike | None = None,
        context_chars: int | None = None,
        max_new_tokens: int | None = None,
    ) -> Verdict:
        """Async twin of :meth:`check_conversation`."""

        def prepare() -> GuardInput:
            return self.prepare_conversation(messages, context_chars=context_chars)

        return (await self._arun(prepare, True, policy, max_new_tokens))[0]

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
        item = _check_item(item)
        return self._run(lambda: item, is_heavy(item), policy, max_new_tokens, stage=stage, call_id=call_id)[0]

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
        item = _check_item(item)
        return (await self._arun(lambda: item, is_heavy(item), policy, max_new_tokens, stage=stage,
                                 call_id=call_id))[0]  # fmt: skip

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
        size = self._batch_size(batch_size)
        engine = self._engine
        try:
            admitted = run_within(engine.prepare_pool, deadline, "preparing the inputs", self._admit_many, inputs,
                                  budget, active)  # fmt: skip
        except DeadlineExceededError as exc:
            return [engine.finish(engine.failed(exc), None, None, active, started) for _ in range(len(inputs))]
        return engine.run_batch(admitted, active, budget, deadline, size, started)

    async def acheck_batch(
        self,
        inputs: Sequence[Mapping[str, Any]],
        *,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        policy: PolicyLike | None = None,
    ) -> list[Verdict]:
        """Async twin of :meth:`check_batch`."""
        from grvl_sdk._threads import to_daemon_thread

        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        size = self._batch_size(batch_size)
        engine = self._engine
        try:
            work = to_daemon_thread(self._admit_many, inputs, budget, active)
            admitted = await await_within(work, deadline, "preparing the inputs")
        except DeadlineExceededError as exc:
            return [engine.finish(engine.failed(exc), None, None, active, started) for _ in range(len(inputs))]
        return await engine.arun_batch(admitted, active, budget, deadline, size, started)

    # -- guarded calls -------------------------------------------------------------------------
    def call(self, request: Any = None, *, policy: PolicyLike | None = None, **request_fields: Any) -> GuardedCall:
        """Start a guarded model call: ``call.check_request()`` before the model, ``call.check_response(result)``
        or ``call.stream(source)`` after it. ``request`` is anything :func:`grvl_sdk.messages.to_messages`
        reads (a string, chat messages of OpenAI/Anthropic/LangChain shape, a prompt value), or give
        ``text=``/``image=``/``images=``. See :class:`grvl_sdk.calls.GuardedCall`."""
        from grvl_sdk.calls import GuardedCall

        return GuardedCall(self, request, policy=policy, **request_fields)

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

    def as_runnable(self, *, policy: PolicyLike | None = None, name: str | None = None) -> Any:
        """This guard as a LangChain ``Runnable`` whose output is the :class:`Verdict`
        (:class:`grvl_sdk.integrations.langchain.GuardRunnable`; ``batch`` is one batched generation).
        ``policy`` overrides the guard's for its checks; ``name`` is the runnable's name. Needs
        ``langchain-core``: raises :class:`~grvl_sdk.errors.MissingDependencyError` without it."""
        from grvl_sdk.integrations.langchain import as_runnable

        return as_runnable(self, policy=policy, name=name)

    # -- internals -------------------------------------------------------------------------------
    def _settings(self, policy: PolicyLike | None, max_new_tokens: int | None) -> tuple[Policy, int, float | None]:
        """(the call's policy, its generation budget, its deadline as a ``time.monotonic()`` value).

        Raises :class:`~grvl_sdk.errors.GuardClosedError` on a closed guard, :class:`InputError` on bad
        settings."""
        self._engine.ensure_open()
        active = self.policy.merged(policy)
        if max_new_tokens is None:
            budget = self.max_new_tokens if active.max_new_tokens is None else active.max_new_tokens
        elif isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}", field="max_new_tokens")
        else:
            budget = max_new_tokens
        deadline = None if active.deadline is None else time.monotonic() + active.deadline
        return active, budget, deadline

    def _batch_size(self, batch_size: int | None) -> int:
        if batch_size is None:
            return self.batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}", field="batch_size")
        return batch_size

    def _run(
        self,
        prepare: Callable[[], GuardInput],
        heavy: bool,
        policy: PolicyLike | None,
        max_new_tokens: int | None,
        *,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> tuple[Verdict, GuardInput | None]:
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        return self._engine.run(prepare, heavy, active, budget, deadline, started, stage=stage, call_id=call_id)

    async def _arun(
        self,
        prepare: Callable[[], GuardInput],
        heavy: bool,
        policy: PolicyLike | None,
        max_new_tokens: int | None,
        *,
        stage: Stage | None = None,
        call_id: str | None = None,
    ) -> tuple[Verdict, GuardInput | None]:
        started = time.perf_counter()
        active, budget, deadline = self._settings(policy, max_new_tokens)
        return await self._engine.arun(prepare, heavy, active, budget, deadline, started, stage=stage,
                                       call_id=call_id)  # fmt: skip

    def _admit_many(self, inputs: Sequence[Mapping[str, Any]], budget: int, policy: Policy) -> list[Admitted]:
        if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Sequence):
            raise InputError("check_batch takes a list of dicts like {'text': ..., 'image': ...}")
        admitted: list[Admitted] = []
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
                admitted.append(self._engine.admit(functools.partial(self._prepare_spec, spec), budget, policy))
            except InputError as exc:
                raise type(exc)(f"check_batch input {index}: {exc.message}", index=index, **exc.details) from exc
        return admitted

    def _prepare_spec(self, spec: Mapping[str, Any]) -> GuardInput:
        return self.prepare(**spec)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend's resources, stop the micro-batcher and close an audit log it opened.

        Idempotent. Afterwards every check raises :class:`~grvl_sdk.errors.GuardClosedError`. A guard
        made by :meth:`with_options` releases only what it does not share."""
        if self._release():
            self._engine.stack.close()

    async def aclose(self) -> None:
        """Async :meth:`close` (also closes a remote backend's async connections)."""
        if self._release():
            await self._engine.stack.aclose()

    def _release(self) -> bool:
        """Mark closed and release what this guard owns besides its backend stack; True when the stack
        is this guard's to close too."""
        if self._engine.closed:
            return False
        self._engine.closed = True
        self._engine.prepare_pool.shutdown()
        for release in self._owned:
            release()
        if self._fetcher is not None:
            self._fetcher.close()
        return self._parent is None

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Guard(model={self.model_id!r}, backend={type(self.backend).__name__})"


def _split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the guard options among ``kwargs``, the rest)."""
    fields = GuardOptions.model_fields
    return {k: v for k, v in kwargs.items() if k in fields}, {k: v for k, v in kwargs.items() if k not in fields}
