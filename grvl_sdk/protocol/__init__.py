"""What the model reads and writes (spec sections 2-3).

- :mod:`~grvl_sdk.protocol.prompt`: the byte-exact system prompt, the transcript, chat messages;
- :mod:`~grvl_sdk.protocol.encoding`: injection-proof tokenisation for local models
  (:meth:`PromptEncoder.encode`);
- :mod:`~grvl_sdk.protocol.parsing`: the output → labels, reasoning and label positions.
"""

from grvl_sdk.protocol.parsing import MAX_OUTPUT_CHARS, Label, ParsedOutput, parse_output, verdict_end
from grvl_sdk.protocol.prompt import (
    IMAGE_BLOCK,
    IMAGE_PLACEHOLDER,
    SYSTEM_PROMPT,
    build_messages,
    build_transcript,
    parse_transcript,
    render_prompt,
)

__all__ = [
    "IMAGE_BLOCK",
    "IMAGE_PLACEHOLDER",
    "MAX_OUTPUT_CHARS",
    "SYSTEM_PROMPT",
    "Label",
    "ParsedOutput",
    "build_messages",
    "build_transcript",
    "parse_output",
    "parse_transcript",
    "render_prompt",
    "verdict_end",
]
