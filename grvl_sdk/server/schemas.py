"""Request and response schemas of the server's endpoints, for its OpenAPI document (``/openapi.json``).

The handlers read the raw body themselves (size limits first, then their own validation with
OpenAI-style errors); these schemas describe what they accept, for clients, docs and API fuzzing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REQUEST_BODIES", "RESPONSES"]

_STR = {"type": "string"}
_TEXT_PART = {"type": "object", "properties": {"type": {"const": "text"}, "text": _STR}, "required": ["type", "text"]}
_IMAGE_PART = {
    "type": "object",
    "properties": {
        "type": {"const": "image_url"},
        "image_url": {
            "anyOf": [_STR, {"type": "object", "properties": {"url": _STR}, "required": ["url"]}],
            "description": "a base64 data: URL, or an http(s) URL the server's image allowlist admits",
        },
    },
    "required": ["type", "image_url"],
}
_MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [_STR, {"type": "array", "items": {"anyOf": [_TEXT_PART, _IMAGE_PART]}}, {"type": "null"}]
        },
        "tool_calls": {"type": "array", "items": {"type": "object"}},
        "tool_call_id": _STR,
        "name": _STR,
    },
    "required": ["role"],
    "additionalProperties": True,
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


REQUEST_BODIES: dict[str, dict[str, Any]] = {
    "chat": _body({
        "type": "object",
        "description": "An OpenAI chat completion request; fields beyond these are forwarded as they are.",
        "properties": {
            "model": _STR,
            "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
            "stream": {"type": "boolean"},
            "n": {"type": "integer", "minimum": 1},
            "max_tokens": {"type": "integer", "minimum": 1},
        },
        "required": ["model", "messages"],
        "additionalProperties": True,
    }),
    "responses": _body({
        "type": "object",
        "description": "An OpenAI Responses request; fields beyond these are forwarded as they are.",
        "properties": {
            "model": _STR,
            "input": {"anyOf": [_STR, {"type": "array", "items": {"type": "object"}, "minItems": 1}]},
            "instructions": {"anyOf": [_STR, {"type": "null"}]},
            "stream": {"type": "boolean"},
        },
        "required": ["model", "input"],
        "additionalProperties": True,
    }),
    "moderations": _body({
        "type": "object",
        "properties": {
            "model": _STR,
            "input": {
                "anyOf": [
                    _STR,
                    {"type": "array", "items": _STR, "minItems": 1},
                    {"type": "array", "items": {"anyOf": [_TEXT_PART, _IMAGE_PART]}, "minItems": 1},
                ]
            },
        },
        "required": ["input"],
    }),
    "litellm": _body({
        "type": "object",
        "description": "LiteLLM's Generic Guardrail API request.",
        "properties": {
            "input_type": {"type": "string", "enum": ["request", "response"]},
            "texts": {"anyOf": [{"type": "array", "items": _STR}, {"type": "null"}]},
            "images": {"anyOf": [{"type": "array", "items": _STR}, {"type": "null"}],
                       "description": "base64 strings, data: URLs or http(s) URLs"},
            "tools": {"anyOf": [{"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
            "tool_calls": {"anyOf": [{"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
            "structured_messages": {"anyOf": [{"type": "array", "items": _MESSAGE}, {"type": "null"}]},
            "request_data": {"anyOf": [{"type": "object"}, {"type": "null"}]},
            "request_headers": {"anyOf": [{"type": "object"}, {"type": "null"}]},
            "litellm_call_id": {"anyOf": [_STR, {"type": "null"}]},
            "litellm_trace_id": {"anyOf": [_STR, {"type": "null"}]},
            "additional_provider_specific_params": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        },
        "required": ["input_type"],
    }),
}  # fmt: skip

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {"message": _STR, "type": _STR,
                                                              "param": {"type": ["string", "null"]},
                                                              "code": {"type": ["string", "null"]}}}},
}  # fmt: skip


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


RESPONSES: dict[str, dict[int | str, dict[str, Any]]] = {
    "moderations": {
        200: _json("One result per input", {
            "type": "object",
            "properties": {
                "id": _STR, "model": _STR,
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "flagged": {"type": "boolean"},
                    "categories": {"type": "object", "additionalProperties": {"type": "boolean"}},
                    "category_scores": {"type": "object", "additionalProperties": {"type": "number"}},
                    "category_applied_input_types": {"type": "object"},
                    "grvl": {"type": "object", "description": "the guard's verdict: decision, label, score, reasoning"},
                }}},
            },
        }),
        400: _json("Invalid input", _ERROR), 401: _json("Missing or wrong API key", _ERROR),
        429: _json("Server busy", _ERROR), 503: _json("Not ready", _ERROR),
    },
    "litellm": {
        200: _json("The guardrail's decision", {
            "type": "object",
            "properties": {"action": {"type": "string", "enum": ["BLOCKED", "NONE"]}, "blocked_reason": _STR,
                           "grvl": {"type": "object"}},
            "required": ["action"],
        }),
        400: _json("Invalid input", _ERROR), 401: _json("Missing or wrong API key", _ERROR),
        429: _json("Server busy", _ERROR), 503: _json("Not ready", _ERROR),
    },
}  # fmt: skip
