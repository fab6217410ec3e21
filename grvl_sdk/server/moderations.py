"""``POST /v1/moderations`` in OpenAI's shape, answered by the guard.

``input``: a string, a list of strings (one result each), or a list of parts ``{"type": "text"}`` /
``{"type": "image_url", "image_url": {"url": "data:... or https://..."}}`` (one multimodal input; unlike
OpenAI's endpoint, several images are accepted, up to ``max_images``). Each input is judged as a
request (``check="request"``), in one batched call.

The guard's judgement is binary (harmful or not), so it is reported under the configured
``moderation_categories`` (default: one extra category, ``harmful``): ``categories[c]`` is ``flagged``,
``category_scores[c]`` the model's probability of ``harmful`` at its label (when the backend gives
log-probabilities; else 1.0 / 0.0 from the decision), ``category_applied_input_types[c]`` the input's
types. OpenAI's standard categories are present for clients that expect them, always ``false`` / ``0.0``
/ ``[]``: the guard does not judge them separately. ``flagged`` is true when the policy's decision is
``block`` or ``error-blocked`` (the guard could not judge, and fails closed). The extension field
``grvl`` holds the decision, label, score, reasoning and any error of each verdict.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from grvl_sdk.errors import GRVLError
from grvl_sdk.server.errors import ApiError, from_grvl_error
from grvl_sdk.server.limits import parse_json
from grvl_sdk.server.outcome import headers_for
from grvl_sdk.server.runtime import Runtime
from grvl_sdk.verdict import Verdict

__all__ = ["OPENAI_CATEGORIES", "register"]

#: OpenAI's moderation categories (reported, never set: the guard judges harm as one class).
OPENAI_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)  # fmt: skip


@dataclass
class _Input:
    text: str = ""
    images: list[str] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return (["text"] if self.text else []) + (["image"] if self.images else [])


def register(app: Any, schemas: dict[str, Any], responses: dict[int | str, dict[str, Any]]) -> None:
    """Add ``POST /v1/moderations`` to ``app``."""

    @app.post("/v1/moderations", tags=["guard"], openapi_extra=schemas["moderations"], responses=responses,
              summary="Classify text and images (OpenAI moderation shape)")  # fmt: skip
    async def moderations(request: Request) -> Any:
        runtime: Runtime = request.app.state.grvl
        runtime.require_key(request.headers, proxy=False)
        guard = runtime.require_guard()
        config = runtime.config
        body = await parse_json(request, config.max_body_bytes, config.body_timeout)
        inputs = await _inputs(runtime, body.get("input"))
        todo = [i for i, item in enumerate(inputs) if item.text or item.images]
        policy = runtime.policy.merged({"check": "request"})
        try:
            verdicts = await guard.acheck_batch(
                [{"text": inputs[i].text or None, "images": inputs[i].images or None} for i in todo], policy=policy
            )
        except GRVLError as exc:
            raise from_grvl_error(exc, param="input") from None
        runtime.metrics.verdicts("moderations", verdicts)
        by_index = dict(zip(todo, verdicts, strict=True))
        categories = config.moderation_categories
        results = [_result(item, by_index.get(i), categories) for i, item in enumerate(inputs)]
        model = body.get("model") if isinstance(body.get("model"), str) and body.get("model") else guard.model_id
        answer = {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results}
        return JSONResponse(answer, headers=headers_for(verdicts))


async def _inputs(runtime: Runtime, given: Any) -> list[_Input]:
    config = runtime.config
    if isinstance(given, str):
        inputs = [_Input(text=given)]
    elif isinstance(given, list) and given and all(isinstance(x, str) for x in given):
        inputs = [_Input(text=x) for x in given]
    elif isinstance(given, list) and given and all(isinstance(x, dict) for x in given):
        inputs = [await _parts(runtime, given)]
    else:
        raise ApiError(400, "input must be a string, a non-empty list of strings, or a non-empty list of "
                       "text / image_url parts", param="input", code="invalid_type")  # fmt: skip
    if len(inputs) > config.max_moderation_inputs:
        raise ApiError(400, f"{len(inputs)} inputs; at most {config.max_moderation_inputs} per request",
                       param="input", code="too_many_inputs")  # fmt: skip
    for index, item in enumerate(inputs):
        if len(item.text) > config.max_text_chars:
            raise ApiError(400, f"input {index} has {len(item.text)} characters; at most {config.max_text_chars}",
                           param="input", code="request_too_long")  # fmt: skip
    return inputs


async def _parts(runtime: Runtime, parts: list[dict[str, Any]]) -> _Input:
    item = _Input()
    texts: list[str] = []
    for index, part in enumerate(parts):
        where = f"input[{index}]"
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            value = part.get("image_url")
            url = value.get("url") if isinstance(value, dict) else value
            if not isinstance(url, str):
                raise ApiError(400, f"{where}: image_url must hold a url", param=where, code="invalid_type")
            if len(item.images) >= runtime.config.max_images:
                raise ApiError(400, f"at most {runtime.config.max_images} images per input", param=where,
                               code="too_many_images")  # fmt: skip
            source = await runtime.images.any_image(url, where)
            item.images.append(source)
        else:
            raise ApiError(
                400,
                f"{where}: a part must be {{'type': 'text', 'text': ...}} or "
                "{'type': 'image_url', 'image_url': {'url': ...}}",
                param=where,
                code="invalid_type",
            )
    item.text = "\n".join(t for t in texts if t)
    return item


def _result(item: _Input, verdict: Verdict | None, categories: tuple[str, ...]) -> dict[str, Any]:
    """One moderation result (see the module docstring); ``verdict`` ``None`` for an empty input."""
    if verdict is None:
        flagged, score = False, 0.0
        extension: dict[str, Any] = {"decision": "allow", "skipped": "empty input"}
    else:
        flagged = verdict.decision in ("block", "error-blocked")
        score = verdict.request_score if verdict.request_score is not None else (1.0 if flagged else 0.0)
        extension = {
            "decision": verdict.decision,
            "request_label": verdict.request_label,
            "score": verdict.request_score,
            "reasoning": verdict.reasoning,
            "failed": verdict.failed,
            "error": verdict.error.code if verdict.error else None,
            "cached": verdict.cached,
            "verdict_id": verdict.id,
            "guard_ms": round(verdict.usage.total_ms, 1),
        }
    names = (*OPENAI_CATEGORIES, *(c for c in categories if c not in OPENAI_CATEGORIES))
    mine = set(categories)
    return {
        "flagged": flagged,
        "categories": {name: flagged if name in mine else False for name in names},
        "category_scores": {name: float(score) if name in mine else 0.0 for name in names},
        "category_applied_input_types": {name: item.types if name in mine else [] for name in names},
        "grvl": extension,
    }
