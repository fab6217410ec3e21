"""grvl-sdk: guardrail middleware around GuardReasoner-VL, a reasoning guard for vision-language models.

>>> from grvl_sdk import Guard
>>> guard = Guard.from_pretrained("yueliu1999/GuardReasoner-VL-Eco-3B", quantization="4bit")
>>> guard.check("How do I pick this lock?", image="door.jpg").blocked

The public surface is re-exported here; the modules behind it follow the data flow: ``messages``
(what users pass) → ``guard``/``engine`` (prepare, cache, run) → ``backends`` (the model) →
``protocol`` (prompt in, parse out) → ``verdict``/``policy`` (judgement, decision) → ``events``/``audit``.
"""

from grvl_sdk.audit import AuditLog
from grvl_sdk.backends.base import Backend
from grvl_sdk.calls import AsyncGuardedStream, GuardedCall, GuardedStream
from grvl_sdk.errors import (
    AuditLogError,
    BackendError,
    CircuitOpenError,
    CompileUnsupportedError,
    DeadlineExceededError,
    FastModeUnsupportedError,
    GRVLError,
    GuardBlocked,
    GuardClosedError,
    ImageError,
    ImageTooLargeError,
    InputError,
    MissingDependencyError,
    ModelLoadError,
    ParseError,
    RemoteBackendError,
)
from grvl_sdk.guard import Guard
from grvl_sdk.options import GuardOptions
from grvl_sdk.policy import Policy
from grvl_sdk.protocol.parsing import ParsedOutput, parse_output
from grvl_sdk.protocol.prompt import SYSTEM_PROMPT, build_messages, build_transcript, parse_transcript, render_prompt
from grvl_sdk.types import FAST, GREEDY, Decoding, Generation, GuardInput, TokenLogprobs
from grvl_sdk.verdict import Decision, ErrorInfo, TierInfo, Usage, Verdict

__version__ = "0.1.0"

__all__ = [
    "FAST",
    "GREEDY",
    "SYSTEM_PROMPT",
    "AsyncGuardedStream",
    "AuditLog",
    "AuditLogError",
    "Backend",
    "BackendError",
    "CircuitOpenError",
    "CompileUnsupportedError",
    "DeadlineExceededError",
    "Decision",
    "Decoding",
    "ErrorInfo",
    "FastModeUnsupportedError",
    "GRVLError",
    "Generation",
    "Guard",
    "GuardBlocked",
    "GuardClosedError",
    "GuardInput",
    "GuardOptions",
    "GuardedCall",
    "GuardedStream",
    "ImageError",
    "ImageTooLargeError",
    "InputError",
    "MissingDependencyError",
    "ModelLoadError",
    "ParseError",
    "ParsedOutput",
    "Policy",
    "RemoteBackendError",
    "TierInfo",
    "TokenLogprobs",
    "Usage",
    "Verdict",
    "__version__",
    "build_messages",
    "build_transcript",
    "parse_output",
    "parse_transcript",
    "render_prompt",
]
