"""The teacher of reasoning synthesis: what it is asked, how its answers are checked, and the HTTP client.

The teacher (any model behind an OpenAI-compatible ``/v1/chat/completions``) is shown the guard's
instruction, the transcript the guard sees (images at the ``<image>`` position, resized as the guard
resizes them) and the correct answers, and asked for reasoning that reaches them
(:func:`teacher_messages`). :func:`validate_teacher_answer` accepts an answer only when it parses and
its labels agree with the gold ones. HTTP failures (connection errors, 429, 5xx) are retried with
back-off.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from grvl_sdk._constants import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from grvl_sdk.data.samples import TrainingSample
from grvl_sdk.errors import ParseError
from grvl_sdk.images import encode_data_url, resize_to_grid
from grvl_sdk.protocol.parsing import ParsedOutput, parse_output
from grvl_sdk.protocol.prompt import SYSTEM_PROMPT, build_messages

if TYPE_CHECKING:
    from grvl_sdk.trainer.synthesize import SynthesisReport

__all__ = ["TEACHER_INSTRUCTION", "HTTPFailure", "Teacher", "teacher_messages", "validate_teacher_answer"]

#: What the teacher is told, after the guard's own instruction.
TEACHER_INSTRUCTION = (
    "You write training data for a safety classifier. Below is an interaction, followed by the correct "
    "answers. Explain step by step, as the classifier should, how the answers follow from the interaction: "
    "what the request asks for, what any image shows, what the response does, and why each is harmful or "
    "unharmful. Do not mention that the answers were given to you. Put the reasoning inside <think> </think>, "
    "then the answers inside <result> </result> exactly as:\n<result>\nRequest: harmful or unharmful\n"
    "Response: harmful, unharmful, or None when there is no response\n</result>"
)


def _gold_lines(sample: TrainingSample) -> str:
    unknown = "(not labelled: decide it yourself)"
    request = sample.request_label or unknown
    response = "None" if sample.response is None else sample.response_label or unknown
    return f"Correct answers:\nRequest: {request}\nResponse: {response}"


def teacher_messages(
    sample: TrainingSample,
    images: Sequence[Image.Image] = (),
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_pixels: int = DEFAULT_MIN_PIXELS,
) -> list[dict[str, Any]]:
    """OpenAI chat messages asking the teacher to explain ``sample``'s gold labels.

    Each image is resized with :func:`grvl_sdk.images.resize_to_grid` within ``[min_pixels, max_pixels]``
    (pixels): the teacher sees the pixels the guard sees, on Qwen2.5-VL's 28-px grid.
    """
    urls = [encode_data_url(resize_to_grid(image, min_pixels=min_pixels, max_pixels=max_pixels)) for image in images]
    guard = build_messages(
        sample.request,
        sample.response,
        num_images=len(urls),
        image_part=lambda i: {"type": "image_url", "image_url": {"url": urls[i]}},
    )
    content: list[dict[str, Any]] = [{"type": "text", "text": "Interaction:\n"}, *guard[1]["content"]]
    content.append({"type": "text", "text": f"{_gold_lines(sample)}\n\n{TEACHER_INSTRUCTION}"})
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": content},
    ]


def validate_teacher_answer(answer: str, sample: TrainingSample) -> tuple[ParsedOutput | None, str | None]:
    """Check a teacher answer against the sample's gold labels.

    Returns ``(parsed, None)`` when usable, else ``(None, reason)`` with reason ``"malformed"`` (no
    closed ``<think>`` and ``<result>``, or no label), ``"wrong_request_label"`` or
    ``"wrong_response_label"``.
    """
    try:
        parsed = parse_output(answer)
    except ParseError:
        return None, "malformed"
    if parsed.source != "result" or not parsed.reasoning:
        return None, "malformed"
    if sample.request_label is not None and parsed.request_label != sample.request_label:
        return None, "wrong_request_label"
    if sample.response is None:
        if parsed.response_label is not None:
            return None, "wrong_response_label"
    elif parsed.response_label is None:
        return None, "malformed"
    elif sample.response_label is not None and parsed.response_label != sample.response_label:
        return None, "wrong_response_label"
    return parsed, None


class HTTPFailure(Exception):
    """The teacher could not be reached, or kept failing (the sample is left undone)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Teacher:
    """An OpenAI-compatible chat endpoint asked for one answer at a time, retrying failed requests."""

    url: str
    model: str
    headers: dict[str, str]
    temperature: float
    max_tokens: int
    max_http_retries: int
    backoff: float
    extra_body: dict[str, Any]

    async def ask(self, client: Any, messages: list[dict[str, Any]], report: SynthesisReport) -> str:
        import httpx

        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.extra_body,
        }
        last = "no attempt"
        for attempt in range(self.max_http_retries + 1):
            if attempt:
                report.http_retries += 1
                await asyncio.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
            report.requests += 1
            try:
                response = await client.post(self.url, json=body, headers=self.headers)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise HTTPFailure(f"HTTP {response.status_code}: {response.text[:200]}")
            try:
                content = response.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                return ""  # an answer without text: counted as malformed
            return content if isinstance(content, str) else ""
        raise HTTPFailure(last)
