"""grvl-sdk: guardrail middleware around GuardReasoner-VL, a reasoning guard for vision-language models.

>>> from grvl_sdk import Guard
>>> guard = Guard.from_pretrained("yueliu1999/GuardReasoner-VL-Eco-3B", quantization="4bit")
>>> guard.check("How do I pick this lock?", image="door.jpg").harmful
"""

from grvl_sdk.audit import AuditLog
from grvl_sdk.backends.base import Backend, Generation, GuardInput
from grvl_sdk.errors import (
    AuditLogError,
    BackendError,
    CircuitOpenError,
    DeadlineExceededError,
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
from grvl_sdk.parsing import ParsedOutput, parse_output
from grvl_sdk.policy import Policy
from grvl_sdk.prompt import SYSTEM_PROMPT, build_messages, build_transcript, parse_transcript, render_prompt
from grvl_sdk.scores import TokenLogprobs
from grvl_sdk.verdict import Decision, ErrorInfo, Usage, Verdict

__version__ = "0.1.0"

__all__ = [
    "SYSTEM_PROMPT",
    "AuditLog",
    "AuditLogError",
    "Backend",
    "BackendError",
    "CircuitOpenError",
    "DeadlineExceededError",
    "Decision",
    "ErrorInfo",
    "GRVLError",
    "Generation",
    "Guard",
    "GuardBlocked",
    "GuardClosedError",
    "GuardInput",
    "ImageError",
    "ImageTooLargeError",
    "InputError",
    "MissingDependencyError",
    "ModelLoadError",
    "ParseError",
    "ParsedOutput",
    "Policy",
    "RemoteBackendError",
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
