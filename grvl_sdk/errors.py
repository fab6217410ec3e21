"""The SDK's exceptions. Every error it raises derives from :class:`GRVLError`.

Each class carries a stable ``code`` string (safe to match on in logs and metrics)::

    GRVLError                      code "grvl_error"
    ├── InputError                 code "invalid_input"        bad arguments to check()/format_prompt()
    │   ├── ImageError             code "invalid_image"        unreadable, corrupt or unsupported image
    │   │   └── ImageTooLargeError code "image_too_large"      decompression bomb / over the pixel limit
    │   └── DataError              code "invalid_training_data" a data record is malformed (file, line, field)
    ├── ParseError                 code "unparseable_output"   the guard's output has no usable verdict
    ├── ModelLoadError             code "model_load_failed"    model id/path not found, bad checkpoint
    │   └── CompileUnsupportedError code "compile_unsupported" ``compile=True`` cannot work here (load time)
    ├── MissingDependencyError     code "missing_dependency"   an optional extra is not installed
    ├── DeadlineExceededError      code "deadline_exceeded"    no verdict within the policy's deadline
    ├── GuardBlocked               code "guard_blocked"        a wrapped call was blocked (``.verdict``, ``.stage``)
    ├── GuardClosedError           code "guard_closed"         a closed guard was used (never turned into "allow")
    ├── UnguardedCallError         code "unguarded_call"       a wrapped client's method the guard cannot judge
    ├── AuditLogError              code "audit_log_error"      the audit log cannot be opened or written
    ├── TrainingError              code "training_error"       training cannot proceed (no usable samples...)
    │   └── TrainingConfigError    code "invalid_training_config" a bad R-SFT / synthesis setting
    ├── EvalError                  code "eval_error"           evaluation: unknown benchmark, bad spec, resume mismatch
    │   └── DataFormatError        code "invalid_data"         a benchmark or prediction file cannot be read
    └── BackendError               code "backend_error"        generation failed inside the backend
        ├── FastModeUnsupportedError code "fast_mode_unsupported" the backend or server cannot give a fast verdict
        └── RemoteBackendError     code "remote_error"         the guard server failed, or answered badly
            └── CircuitOpenError   code "circuit_open"         recent calls failed: the server is not called for a while

``MissingDependencyError`` is also an ``ImportError``; ``InputError``, ``EvalError`` and
``TrainingConfigError`` are also ``ValueError``; ``UnguardedCallError`` is also a ``NotImplementedError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from grvl_sdk.verdict import Verdict

__all__ = [
    "AuditLogError",
    "BackendError",
    "CircuitOpenError",
    "CompileUnsupportedError",
    "DataError",
    "DataFormatError",
    "DeadlineExceededError",
    "EvalError",
    "EvalModeError",
    "FastModeUnsupportedError",
    "GRVLError",
    "GuardBlocked",
    "GuardClosedError",
    "ImageError",
    "ImageTooLargeError",
    "InputError",
    "MissingDependencyError",
    "ModelLoadError",
    "ParseError",
    "RemoteBackendError",
    "TrainingConfigError",
    "TrainingError",
    "UnguardedCallError",
]


class GRVLError(Exception):
    """Base class of every error raised by grvl-sdk."""

    code: ClassVar[str] = "grvl_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description: ``{"code", "type", "message", **details}``."""
        return {
            "code": self.code,
            "type": type(self).__name__,
            "message": self.message,
            **{k: v for k, v in self.details.items() if isinstance(v, (str, int, float, bool, type(None)))},
        }


class InputError(GRVLError, ValueError):
    """The caller passed something the guard cannot check (no text and no image, wrong types...)."""

    code: ClassVar[str] = "invalid_input"


class ImageError(InputError):
    """An image could not be read: unknown type, corrupt data, unsupported format."""

    code: ClassVar[str] = "invalid_image"


class ImageTooLargeError(ImageError):
    """An image exceeds the decompression-bomb limit."""

    code: ClassVar[str] = "image_too_large"


class ParseError(GRVLError):
    """The guard's output holds no usable verdict (truncated, malformed, empty, conflicting labels).

    ``request_label`` / ``response_label``: what could still be read outside the reasoning (``None``
    when nothing); a ``"harmful"`` there blocks whatever the fail mode.
    """

    code: ClassVar[str] = "unparseable_output"

    def __init__(
        self,
        message: str,
        *,
        output: str = "",
        request_label: str | None = None,
        response_label: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, **details)
        self.output = output
        self.request_label = request_label
        self.response_label = response_label


class ModelLoadError(GRVLError):
    """The model could not be loaded (not found, no network and not cached, broken checkpoint)."""

    code: ClassVar[str] = "model_load_failed"


class CompileUnsupportedError(ModelLoadError):
    """``from_pretrained(..., compile=True)`` cannot compile the decode step with this model, device, torch
    or settings (quantised weights, several devices, no C++ compiler or Triton for inductor, a failed
    warm-up compile...). Raised at load, never at check time; ``details["reason"]`` names the case."""

    code: ClassVar[str] = "compile_unsupported"


class MissingDependencyError(GRVLError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    code: ClassVar[str] = "missing_dependency"


class BackendError(GRVLError):
    """The backend failed while generating (out of memory, device error, server error...)."""

    code: ClassVar[str] = "backend_error"


class FastModeUnsupportedError(BackendError):
    """``mode="fast"`` (or the fast step of ``mode="auto"``) cannot run on this backend: it has no fast
    tier, or the server refused or ignored the assistant-prefix continuation (``continue_final_message``)
    or sent no ``logprobs``. A check in fast mode then fails closed; ``mode="auto"`` escalates to
    reasoning."""

    code: ClassVar[str] = "fast_mode_unsupported"


class RemoteBackendError(BackendError):
    """The guard server could not be reached, failed (5xx, 429 after retries) or answered badly.

    ``details["status_code"]`` holds the HTTP status when there was one.
    """

    code: ClassVar[str] = "remote_error"


class CircuitOpenError(RemoteBackendError):
    """The circuit breaker is open after repeated failures: the server is not called until it resets."""

    code: ClassVar[str] = "circuit_open"


class DeadlineExceededError(GRVLError):
    """No verdict within the policy's ``deadline``; the policy's fail mode decides what happens."""

    code: ClassVar[str] = "deadline_exceeded"


class GuardBlocked(GRVLError):
    """A guarded call was blocked. ``verdict`` is the verdict that blocked it; ``stage`` is
    ``"request"`` (the wrapped function was not called), ``"response"`` or ``"stream"``."""

    code: ClassVar[str] = "guard_blocked"

    def __init__(self, verdict: Verdict, *, stage: str) -> None:
        reason = verdict.fail_reason or (
            f"request {verdict.request_label}, response {verdict.response_label or 'not judged'}"
        )
        super().__init__(f"blocked by the guard at the {stage} check ({verdict.decision}: {reason})", stage=stage)
        self.verdict = verdict
        self.stage = stage


class GuardClosedError(GRVLError):
    """The guard (or its backend) was closed: nothing can be judged any more.

    Raised by every check of a closed guard, never turned into a verdict, so no fail mode (not even
    ``on_error="allow"``) lets a call through a closed guard.
    """

    code: ClassVar[str] = "guard_closed"


class UnguardedCallError(GRVLError, NotImplementedError):
    """A method of a guarded client that the guard cannot judge (e.g. ``responses.stream`` of
    :class:`~grvl_sdk.integrations.openai.GuardedOpenAI`): refused rather than passed through unjudged."""

    code: ClassVar[str] = "unguarded_call"


class AuditLogError(GRVLError):
    """The audit log cannot be opened (a folder, no permission...) or a line could not be written.

    ``details["path"]`` names the file. Raised when the guard is built, and on a failed write when the
    log was opened with ``on_error="raise"`` (otherwise a failed write is logged at CRITICAL level).
    """

    code: ClassVar[str] = "audit_log_error"


class EvalError(GRVLError, ValueError):
    """Evaluation cannot proceed: unknown benchmark, bad benchmark spec, a results folder of another run."""

    code: ClassVar[str] = "eval_error"


class EvalModeError(EvalError):
    """A results folder of the wrong latency tier for the task: e.g. ``grvl eval calibrate`` given a think
    or auto run where it needs the fast one. ``details``: ``folder``, ``recorded`` (the mode its ``run.json``
    or ``results.json`` records; ``None`` when it records none) and ``expected``."""

    code: ClassVar[str] = "eval_mode_mismatch"


class DataFormatError(EvalError):
    """A benchmark or prediction file cannot be read (not JSON, unknown layout, bad label)."""

    code: ClassVar[str] = "invalid_data"


class DataError(InputError):
    """A data record (training or evaluation, see :mod:`grvl_sdk.data`) is malformed. ``details`` name the
    ``file``, ``line`` (1-based, when known) and ``field``; the message starts with ``file:line: field:``.
    Evaluation files raise a subclass that is also a :class:`DataFormatError`."""

    code: ClassVar[str] = "invalid_training_data"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        **details: Any,
    ) -> None:
        where = ":".join(str(part) for part in (file, line) if part is not None)
        prefix = f"{where}: " if where else ""
        if field:
            prefix += f"field {field!r}: "
        super().__init__(prefix + message, file=file, line=line, field=field, **details)
        self.file = file
        self.line = line
        self.field = field
        self.problem = message


class TrainingError(GRVLError):
    """Training or reasoning synthesis cannot proceed (no usable samples, checkpoint to resume missing...)."""

    code: ClassVar[str] = "training_error"


class TrainingConfigError(TrainingError, ValueError):
    """A bad R-SFT or synthesis setting (unknown key, batch sizes that do not divide, bad method...)."""

    code: ClassVar[str] = "invalid_training_config"
