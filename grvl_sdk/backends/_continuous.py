"""Continuous batching for the local backend: finished rows leave the running batch and queued inputs
take their slots.

transformers' own continuous batching (``generate_batch`` / ``ContinuousBatchingManager``, 5.x) takes
token ids only (no ``pixel_values`` / ``image_grid_thw``) and 1-D positions, so it cannot run
Qwen2.5-VL image checks. This loop drives the model's ``forward`` itself:

- **Admission.** Up to ``slots`` rows run at once. New inputs are encoded alone, prefilled together
  (left-padded among themselves, images through the vision tower, 3-D M-RoPE positions from the model's
  ``get_rope_index`` exactly as ``generate`` computes them), and their key/value cache is merged into
  the running batch's (``DynamicCache`` tensors left-padded to the longer length, attention mask zeros
  over the padding).
- **Decoding.** One token per running row per step, greedy (argmax of the logits, what ``generate``
  does with the guard's decoding), positions = each row's last position + 1 (text row and the three
  M-RoPE rows, as ``generate`` advances them).
- **Retirement.** A row leaves after the step that closed its verdict block (the ``</result>`` rule of
  :class:`~grvl_sdk.backends._decoding._StopOnVerdict`), wrote an end-of-sequence or pad token,
  reached its own ``max_new_tokens``, or when its own deadline passed
  (:class:`~grvl_sdk.errors.DeadlineExceededError` for that row only), or when its caller stopped
  waiting (``job.abandoned``: a cancelled asyncio caller), so its slot goes to the next input; cache
  columns that no remaining row uses are cut off.
- **Label scores.** Per row, as :class:`~grvl_sdk.backends._decoding._LabelLogprobs`: the top-k
  log-probabilities at the steps after a label-trigger token of *that row* (every step with
  ``score_every_step``).
- **Prefix reuse.** With a :class:`PrefixCache`, a prompt that starts with the tokens (and images) of
  an earlier prompt (the successive checks of one stream: request + response so far) is prefilled from
  that prompt's cached keys/values: only the new tokens run through the model.

Each output is the same :class:`~grvl_sdk.types.Generation` the ``generate`` path builds
(``LocalBackend._to_generation``); ``latency_ms`` is the row's own time from admission to retirement.
The model lock is taken per forward pass, so other callers of the backend interleave between steps.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from grvl_sdk.backends._decoding import _StopOnVerdict
from grvl_sdk.errors import BackendError, DeadlineExceededError, GuardClosedError
from grvl_sdk.types import Decoding, Generation, GuardInput

if TYPE_CHECKING:
    from grvl_sdk.backends.local import LocalBackend

__all__ = ["ContinuousDecoder", "ContinuousJob", "Job", "PrefixCache", "continuous_decoding"]

#: What one input ended with: its output, or the error that failed it.
Outcome = Generation | Exception

#: Tokens per forward pass when the prompt after a cached prefix is prefilled.
_SUFFIX_CHUNK = 512


class Job(Protocol):
    """One queued check: the prepared input, its generation budget and deadline (``time.monotonic()``);
    ``abandoned`` turns true when its caller stops waiting (its row is then dropped)."""

    @property
    def item(self) -> GuardInput: ...
    @property
    def max_new_tokens(self) -> int: ...
    @property
    def deadline(self) -> float | None: ...
    @property
    def abandoned(self) -> bool: ...


J = TypeVar("J", bound=Job)


@dataclass(frozen=True, eq=False)
class ContinuousJob:
    """A :class:`Job` of a direct ``generate`` call."""

    item: GuardInput
    max_new_tokens: int
    deadline: float | None
    abandoned: bool = False


def continuous_decoding(decoding: Decoding) -> bool:
    """Whether the continuous loop implements ``decoding``: greedy, one output, no repetition penalty,
    the think tier (sampling and the fast tier stay on ``generate``)."""
    return decoding.greedy and decoding.n == 1 and decoding.repetition_penalty == 1.0 and decoding.tier == "think"


@dataclass
class _Encoded:
    ids: list[int]
    pixel_values: Any | None
    image_grid_thw: Any | None
    image_key: bytes


@dataclass
class _Row:
    job: Any
    encoded: _Encoded
    started: float
    tokens: list[int] = field(default_factory=list)
    top: dict[int, tuple[list[float], list[int]]] | None = None
    armed: bool = False


@dataclass
class _Prefix:
    ids: tuple[int, ...]
    image_key: bytes
    keys: list[Any]  # per layer (1, heads, len, head_dim)
    values: list[Any]


class PrefixCache:
    """A small LRU of prompt key/value caches (one row each, unpadded), keyed by prompt token ids and
    the hash of the prompt's pixel values. :meth:`longest` finds the cached prompt sharing the longest
    token prefix with a new one. ``prefilled``/``reused`` count prompt tokens run through the model and
    prompt tokens taken from the cache (for tests and metrics).

    A prefix is reused only when it holds at least ``min_share`` of the new prompt (and ``min_tokens``):
    the new tokens then attend to the cached ones through an explicit mask (a rectangle, not the causal
    kernel), which costs more than prefilling the whole prompt when the new part is the larger one."""

    def __init__(self, size: int = 8, min_tokens: int = 16, min_share: float = 0.5) -> None:
        self.size = size
        self.min_tokens = min_tokens
        self.min_share = min_share
        self._entries: OrderedDict[tuple[tuple[int, ...], bytes], _Prefix] = OrderedDict()
        self._lock = threading.Lock()
        self.prefilled = 0
        self.reused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: _Prefix) -> None:
        with self._lock:
            key = (entry.ids, entry.image_key)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def longest(self, ids: Sequence[int], image_key: bytes) -> tuple[_Prefix, int] | None:
        """The entry with the longest common token prefix (at least ``min_tokens``, and shorter than
        ``ids``, so at least one token is left to run) and the length of that prefix."""
        best: tuple[_Prefix, int] | None = None
        with self._lock:
            for entry in self._entries.values():
                if entry.image_key != image_key:
                    continue
                n = _common_prefix(entry.ids, ids)
                n = min(n, len(ids) - 1)
                enough = n >= self.min_tokens and n >= self.min_share * len(ids)
                if enough and (best is None or n > best[1]):
                    best = (entry, n)
            if best is not None:
                self._entries.move_to_end((best[0].ids, best[0].image_key))
        return best

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ContinuousDecoder:
    """Greedy decoding of a stream of jobs over ``slots`` rows (see the module docstring)."""

    def __init__(self, backend: LocalBackend, *, slots: int, prefix_cache: PrefixCache | None = None) -> None:
        import torch

        self.backend = backend
        self.slots = max(1, slots)
        self.prefix_cache = prefix_cache
        self.torch = torch
        model = backend.model
        if model is None:
            raise GuardClosedError("the local backend is closed (its model was released)")
        # Taken once: a close() during the run sets backend.model to None (checked before each forward
        # pass), so nothing here may reach the model through the backend after that.
        self.config = model.config
        self.device = backend.device
        self.pixel_dtype = backend._pixel_dtype()
        self.core = getattr(model, "model", model)
        self.stopper = _StopOnVerdict(backend.tokenizer, backend._trigger_ids, 0)
        self.stop_ids = set(backend._eos_ids) | {backend.encoder.pad_token_id}
        #: Counters: prefill forward passes, decode forward passes, tokens generated (all rows).
        self.prefills = 0
        self.decode_steps = 0
        self.generated = 0

    # -- the loop --------------------------------------------------------------------------------
    def run(
        self,
        first: Sequence[J],
        settle: Callable[[J, Outcome], None],
        take: Callable[[int], Sequence[J]] | None = None,
        *,
        score_every_step: bool | None = None,
    ) -> None:
        """Decode ``first`` and whatever ``take(n)`` (non-blocking, up to ``n`` jobs) hands over while
        rows free up; ``settle(job, outcome)`` is called once per job, as soon as it is done. Returns
        when no row runs and nothing more is taken."""
        every_step = self.backend.score_every_step if score_every_step is None else score_every_step
        queue: list[Any] = list(first)
        rows: list[_Row] = []
        state: _Batch | None = None
        while True:
            free = self.slots - len(rows)
            if free > 0 and take is not None and len(queue) < free:
                queue.extend(take(free - len(queue)))
            if free > 0 and queue:
                admitted, queue = queue[:free], queue[free:]
                new_rows, new_state = self._admit(admitted, settle, every_step)
                if new_rows:
                    state = new_state if state is None else state.merge(new_state)
                    rows.extend(new_rows)
                    rows, state = self._retire(rows, state, settle)
                continue  # fill all free slots before decoding
            if not rows:
                if queue:
                    continue
                return
            rows, state = self._expire(rows, state, settle)
            if not rows or state is None:
                continue
            try:
                logits = self._forward_decode(state, rows)
            except _Closed:
                self._fail_all(rows, settle, GuardClosedError("the local backend is closed (its model was released)"))
                for job in queue:
                    settle(job, GuardClosedError("the local backend is closed (its model was released)"))
                return
            except _Busy:
                continue
            except Exception as exc:
                self._fail_all(rows, settle, _backend_error(exc, len(rows)))
                rows, state = [], None
                continue
            self._append(rows, logits, every_step)
            rows, state = self._retire(rows, state, settle)

    def _fail_all(self, rows: list[_Row], settle: Callable[[Any, Outcome], None], exc: Exception) -> None:
        for row in rows:
            settle(row.job, exc)

    # -- admission ---------------------------------------------------------------------------------
    def _encode(self, job: Any) -> _Encoded:
        backend = self.backend
        batch = backend.encoder.encode_batch([job.item], device=self.device, pixel_dtype=self.pixel_dtype)
        image_key = b""
        if batch.pixel_values is not None and self.prefix_cache is not None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(batch.pixel_values.detach().float().cpu().numpy().tobytes())
            if batch.image_grid_thw is not None:
                digest.update(batch.image_grid_thw.cpu().numpy().tobytes())
            image_key = digest.digest()
        return _Encoded(batch.input_ids[0].tolist(), batch.pixel_values, batch.image_grid_thw, image_key)

    def _admit(
        self, jobs: Sequence[Any], settle: Callable[[Any, Outcome], None], every_step: bool
    ) -> tuple[list[_Row], _Batch | None]:
        """Encode and prefill ``jobs``; returns their rows (first token chosen) and their cache."""
        rows: list[_Row] = []
        now = time.monotonic()
        for job in jobs:
            if self.backend.model is None:
                settle(job, GuardClosedError("the local backend is closed (its model was released)"))
            elif job.abandoned:
                settle(job, _abandoned())
            elif job.deadline is not None and now >= job.deadline:
                settle(job, DeadlineExceededError("deadline passed before generation started"))
            else:
                try:
                    encoded = self._encode(job)
                except Exception as exc:
                    settle(job, exc)
                    continue
                top: dict[int, tuple[list[float], list[int]]] | None = {} if self.backend.score_top_k else None
                rows.append(_Row(job, encoded, time.perf_counter(), top=top))
        if not rows:
            return [], None
        groups = [rows] if self.prefix_cache is None else [[row] for row in rows]
        done_rows: list[_Row] = []
        states: list[_Batch] = []
        for group in groups:
            try:
                logits, state = self._prefill(group)
            except (_Closed, _Busy) as exc:
                error: Exception = (
                    GuardClosedError("the local backend is closed (its model was released)")
                    if isinstance(exc, _Closed)
                    else DeadlineExceededError("deadline passed while waiting for the model (busy with other checks)")
                )
                self._fail_all(group, settle, error)
                continue
            except Exception as exc:
                if len(group) == 1:
                    settle(group[0].job, _backend_error(exc, 1))
                    continue
                for row in group:  # isolate the input that fails
                    try:
                        logits_one, state_one = self._prefill([row])
                    except Exception as one:
                        settle(row.job, _backend_error(one, 1))
                        continue
                    row.armed = every_step
                    self._append([row], logits_one, every_step)
                    done_rows.append(row)
                    states.append(state_one)
                continue
            for row in group:
                row.armed = every_step
            self._append(group, logits, every_step)
            done_rows.extend(group)
            states.append(state)
        if not states:
            return [], None
        merged = states[0]
        for other in states[1:]:
            merged = merged.merge(other)
        return done_rows, merged

    def _prefill(self, group: list[_Row]) -> tuple[Any, _Batch]:
        if self.backend.model is None:
            raise _Closed
        torch = self.torch
        device = self.device
        pad = self.backend.encoder.pad_token_id
        width = max(len(row.encoded.ids) for row in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for i, row in enumerate(group):
            n = len(row.encoded.ids)
            ids[i, width - n :] = torch.tensor(row.encoded.ids, dtype=torch.long)
            mask[i, width - n :] = 1
        ids, mask = ids.to(device), mask.to(device)
        image_token = self.backend.encoder.image_token_id
        mm_types = (ids == image_token).long() if image_token is not None else None
        pixels = [row.encoded.pixel_values for row in group if row.encoded.pixel_values is not None]
        grids = [row.encoded.image_grid_thw for row in group if row.encoded.image_grid_thw is not None]
        pixel_values = torch.cat(pixels) if pixels else None
        grid = torch.cat(grids) if grids else None
        text = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        if grid is not None and mm_types is not None:
            vision, _ = self.core.get_rope_index(
                ids, mm_token_type_ids=mm_types, image_grid_thw=grid, attention_mask=mask
            )
        else:
            vision = text.unsqueeze(0).expand(3, -1, -1)
        positions = torch.cat([text.unsqueeze(0), vision], dim=0)
        reuse = self._reusable(group)
        start = 0
        cache = self._new_cache()
        if reuse is not None:
            entry, start = reuse
            for layer, keys, values in zip(cache.layers, entry.keys, entry.values, strict=True):
                layer.lazy_initialization(keys, values)
                layer.keys, layer.values = keys[:, :, :start], values[:, :, :start]
        # After a cached prefix the new tokens run in chunks: each chunk's attention is a masked rectangle
        # over the cache (no causal kernel), so one rectangle over all new tokens would cost more than
        # the causal prefill of the whole prompt.
        bounds = [0, width] if start == 0 else [*range(start, width, _SUFFIX_CHUNK), width]
        for a, b in itertools.pairwise(bounds):
            kwargs: dict[str, Any] = {
                "input_ids": ids[:, a:b],
                "attention_mask": mask[:, :b],
                "position_ids": positions[:, :, a:b].contiguous(),
                "cache": cache,
                "use_cache": True,
                "logits_to_keep": 1,
            }
            if pixel_values is not None and start == 0:
                kwargs.update(pixel_values=pixel_values, image_grid_thw=grid, mm_token_type_ids=mm_types)
            output = self._forward(kwargs, [row.job for row in group])
        self.prefills += 1
        if self.prefix_cache is not None:
            self.prefix_cache.prefilled += width - start
            self.prefix_cache.reused += start
            row = group[0]
            self.prefix_cache.put(
                _Prefix(
                    tuple(row.encoded.ids),
                    row.encoded.image_key,
                    [layer.keys for layer in cache.layers],
                    [layer.values for layer in cache.layers],
                )
            )
        state = _Batch(torch, cache, mask, positions[:, :, -1] + 1, ids[:, -1:].clone())
        return output.logits[:, -1, :], state

    def _reusable(self, group: list[_Row]) -> tuple[_Prefix, int] | None:
        """A cached prompt prefix for a single-row group (no images after the prefix)."""
        if self.prefix_cache is None or len(group) != 1:
            return None
        encoded = group[0].encoded
        found = self.prefix_cache.longest(encoded.ids, encoded.image_key)
        if found is None:
            return None
        _, start = found
        image_token = self.backend.encoder.image_token_id
        if image_token is not None and image_token in encoded.ids[start:]:
            return None  # the new tokens hold image tokens: their embeddings need the vision tower
        return found

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        config = self.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        cache = DynamicCache(config=text_config)
        if any(type(layer).__name__ != "DynamicLayer" for layer in cache.layers):
            raise BackendError("continuous batching needs full-attention layers (this model uses a sliding window)")
        return cache

    # -- decoding ----------------------------------------------------------------------------------
    def _forward(self, kwargs: dict[str, Any], jobs: Sequence[Any]) -> Any:
        backend = self.backend
        deadlines = [job.deadline for job in jobs]
        deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not backend._lock.acquire(timeout=wait):
            raise _Busy
        try:
            if backend.model is None:
                raise _Closed
            with self.torch.inference_mode():
                return backend.model(**kwargs)
        finally:
            backend._lock.release()

    def _forward_decode(self, state: _Batch, rows: list[_Row]) -> Any:
        torch = self.torch
        mask = torch.cat([state.mask, state.mask.new_ones((state.mask.shape[0], 1))], dim=1)
        kwargs = {
            "input_ids": state.last,
            "attention_mask": mask,
            "position_ids": state.positions.unsqueeze(-1),
            "cache": state.cache,
            "use_cache": True,
            "logits_to_keep": 1,
        }
        output = self._forward(kwargs, [row.job for row in rows])
        state.mask = mask
        state.positions = state.positions + 1
        self.decode_steps += 1
        return output.logits[:, -1, :]

    def _append(self, rows: list[_Row], logits: Any, every_step: bool) -> None:
        """Choose each row's next token (argmax) and record its label scores where armed."""
        chosen = logits.argmax(dim=-1)
        k = self.backend.score_top_k
        armed = [i for i, row in enumerate(rows) if row.armed and row.top is not None]
        if k and armed:
            picked = logits[armed].float()
            values, indices = picked.topk(min(k, picked.shape[-1]), dim=-1)
            values = (values - picked.logsumexp(dim=-1, keepdim=True)).cpu().tolist()
            indices = indices.cpu().tolist()
            for j, i in enumerate(armed):
                row = rows[i]
                assert row.top is not None
                row.top[len(row.tokens)] = (values[j], indices[j])
        triggers = self.backend._label_trigger_ids
        self.generated += len(rows)
        for row, token in zip(rows, chosen.tolist(), strict=True):
            row.tokens.append(token)
            row.armed = every_step or token in triggers

    def _finished(self, row: _Row) -> bool:
        token = row.tokens[-1]
        if token in self.stop_ids or len(row.tokens) >= row.job.max_new_tokens:
            return True
        if token in self.stopper.trigger_ids:
            ids = self.torch.tensor([row.tokens], dtype=self.torch.long)
            return bool(self.stopper(ids, None)[0])
        return False

    def _retire(
        self, rows: list[_Row], state: _Batch | None, settle: Callable[[Any, Outcome], None]
    ) -> tuple[list[_Row], _Batch | None]:
        assert state is not None
        state.last = self._last_tokens(rows, state)
        keep = [i for i, row in enumerate(rows) if not self._finished(row)]
        for i, row in enumerate(rows):
            if i not in keep:
                settle(row.job, self._generation(row))
        if len(keep) == len(rows):
            return rows, state
        if not keep:
            return [], None
        return [rows[i] for i in keep], state.select(keep)

    def _last_tokens(self, rows: list[_Row], state: _Batch) -> Any:
        return self.torch.tensor([[row.tokens[-1]] for row in rows], dtype=self.torch.long, device=state.mask.device)

    def _expire(
        self, rows: list[_Row], state: _Batch | None, settle: Callable[[Any, Outcome], None]
    ) -> tuple[list[_Row], _Batch | None]:
        now = time.monotonic()
        keep = [
            i
            for i, row in enumerate(rows)
            if (row.job.deadline is None or now < row.job.deadline) and not row.job.abandoned
        ]
        if len(keep) == len(rows):
            return rows, state
        for i, row in enumerate(rows):
            if i in keep:
                continue
            if row.job.abandoned:
                settle(row.job, _abandoned())
            else:
                elapsed = (time.perf_counter() - row.started) * 1000
                settle(row.job, DeadlineExceededError(f"deadline passed after {elapsed:.0f} ms of generation"))
        if not keep or state is None:
            return [], None
        return [rows[i] for i in keep], state.select(keep)

    def _generation(self, row: _Row) -> Generation:
        latency_ms = (time.perf_counter() - row.started) * 1000
        return self.backend._to_generation(
            row.tokens, 0, len(row.encoded.ids), latency_ms, row.job.max_new_tokens, row.top
        )


class _Closed(Exception):
    """The backend's model was released."""


class _Busy(Exception):
    """The model lock was not free before the deadline."""


def _abandoned() -> DeadlineExceededError:
    return DeadlineExceededError("the caller stopped waiting for this check (cancelled)")


def _backend_error(exc: Exception, size: int) -> Exception:
    if isinstance(exc, _Closed):
        return GuardClosedError("the local backend is closed (its model was released)")
    if isinstance(exc, _Busy):
        return DeadlineExceededError("deadline passed while waiting for the model (busy with other checks)")
    if isinstance(exc, (BackendError, DeadlineExceededError, GuardClosedError)):
        return exc
    if type(exc).__name__ == "OutOfMemoryError":
        return BackendError(f"out of GPU memory generating a batch of {size}: {exc}")
    return BackendError(f"generation failed: {type(exc).__name__}: {exc}")


class _Batch:
    """The running batch's cache: per-layer keys/values (batch, heads, length, head_dim) in a
    ``DynamicCache``, the 2-D attention mask (batch, length), each row's next positions (4, batch)
    and its last token (batch, 1)."""

    def __init__(self, torch: Any, cache: Any, mask: Any, positions: Any, last: Any) -> None:
        self.torch = torch
        self.cache = cache
        self.mask = mask
        self.positions = positions
        self.last = last

    def merge(self, other: _Batch | None) -> _Batch:
        """This batch's rows, then ``other``'s, left-padded to the longer cache."""
        if other is None:
            return self
        torch = self.torch
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(torch, mine.keys, width, -2), _pad_left(torch, theirs.keys, width, -2)])
            mine.values = torch.cat(
                [_pad_left(torch, mine.values, width, -2), _pad_left(torch, theirs.values, width, -2)]
            )
        self.mask = torch.cat([_pad_left(torch, self.mask, width, -1), _pad_left(torch, other.mask, width, -1)])
        self.positions = torch.cat([self.positions, other.positions], dim=1)
        self.last = torch.cat([self.last, other.last])
        return self

    def select(self, keep: list[int]) -> _Batch:
        """Only rows ``keep``; leading columns no kept row attends to are cut off."""
        torch = self.torch
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        lead = int(used[0, 0]) if used.numel() else 0
        self.mask = mask[:, lead:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, lead:]
            layer.values = layer.values.index_select(0, index)[:, :, lead:]
        self.positions = self.positions.index_select(1, index)
        self.last = self.last.index_select(0, index)
        return self


def _pad_left(torch: Any, tensor: Any, width: int, dim: int) -> Any:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
