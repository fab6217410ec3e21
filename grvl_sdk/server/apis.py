"""The two proxied OpenAI APIs, Chat Completions and Responses: what each request holds for the guard,
what is refused, how its answers and stream events are read, and how a block is answered in its shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grvl_sdk.messages._response_events import ResponsesEventReader
from grvl_sdk.policy import Policy
from grvl_sdk.server.config import ServerConfig
from grvl_sdk.server.errors import ApiError
from grvl_sdk.server.outcome import block_reason
from grvl_sdk.server.responses_fields import drop_unjudged_fields
from grvl_sdk.server.sse import DONE, encode
from grvl_sdk.shapes import refusal
from grvl_sdk.verdict import Verdict

__all__ = ["CHAT", "RESPONSES", "Api", "StreamState"]

#: Fields of a chat message / stream delta that the guard reads; any other field of an upstream answer
#: (``reasoning_content``, ``annotations``...) is dropped, so the caller only receives what was judged.
JUDGED_MESSAGE_FIELDS = frozenset({"role", "content", "refusal", "tool_calls", "function_call"})
#: Fields of a chat choice passed on (``logprobs`` repeats the judged text token by token); any other
#: field (a completions-style ``text``...) is dropped like the unjudged message fields above.
JUDGED_CHOICE_FIELDS = frozenset({"index", "message", "delta", "finish_reason", "logprobs"})
#: Top-level fields of a chat answer / chunk passed on; others (which could hold text) are dropped.
CHAT_ANSWER_FIELDS = frozenset(
    {"id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier"}
)
#: Responses events carrying the whole answer: checked once more as a whole before they are passed on.
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
#: Responses fields naming context kept by the upstream, which the guard cannot see.
_STORED_CONTEXT = ("previous_response_id", "conversation", "prompt")


@dataclass
class StreamState:
    """What a proxied stream has shown so far: the last chunk (the template of a refusal chunk), the
    Responses ``response`` object and event sequence number, and how many fields were dropped."""

    last: Any = None
    response: Any = None
    sequence: int = -1
    dropped: int = 0


def _drop_unjudged(holder: Any, kept: frozenset[str] = JUDGED_MESSAGE_FIELDS) -> int:
    """Remove the fields of ``holder`` (a message / delta, or ``kept``'s kind) the guard does not read;
    how many were removed."""
    if not isinstance(holder, dict):
        return 0
    extra = [key for key in holder if key not in kept]
    for key in extra:
        del holder[key]
    return len(extra)


def _error_event(message: str, code: str) -> dict[str, Any]:
    kind = "invalid_request_error" if code == "content_filter" else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class Api:
    """One proxied API (see the module docstring); subclasses fill in the details."""

    name = ""
    #: The upstream path below its API root.
    path = ""

    def validate(self, body: dict[str, Any], config: ServerConfig) -> None:
        """400 for what this API's request must not hold, or cannot be judged."""
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise ApiError(400, "stream must be true or false", param="stream", code="invalid_type")

    def image_root(self, body: dict[str, Any]) -> Any:
        """The part of the body holding image parts (fetched and inlined there)."""
        raise NotImplementedError

    def messages(self, body: dict[str, Any]) -> list[Any]:
        """The request as chat messages for the guard."""
        raise NotImplementedError

    def judged_view(self, answer: Any, state: StreamState) -> Any:
        """``answer`` (a whole answer or a stream event) without the fields the guard does not read."""
        return answer

    def chunk_reader(self) -> Callable[[Any], str] | None:
        """The ``get_chunk_text`` of one stream of this API (``None``: the default chunk reader)."""
        return None

    def blocked_answer(self, verdict: Verdict, policy: Policy, model: str, template: Any = None) -> dict[str, Any]:
        """A whole answer refusing, in this API's shape."""
        raise NotImplementedError

    def blocked_events(self, verdict: Verdict, policy: Policy, model: str, state: StreamState, style: str) -> bytes:
        """The end of a stream that was blocked (or whose request was, for a streaming request)."""
        raise NotImplementedError

    def error_events(self, message: str, code: str, state: StreamState) -> bytes:
        """An in-stream error (the response had started: no status to change)."""
        raise NotImplementedError

    def event_bytes(self, event: Any) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        """What ends a stream that finished normally."""
        return b""

    def final_answer(self, event: Any) -> Any:
        """The whole answer an event carries (checked once more), or ``None``."""
        return None


class _Chat(Api):
    name = "chat"
    path = "chat/completions"

    def validate(self, body: dict[str, Any], config: ServerConfig) -> None:
        super().validate(body, config)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list", param="messages", code="invalid_type")
        n = body.get("n")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= config.max_choices):
            raise ApiError(400, f"n must be an integer from 1 to {config.max_choices} (each choice is judged)",
                           param="n", code="invalid_value")  # fmt: skip

    def image_root(self, body: dict[str, Any]) -> Any:
        return body["messages"]

    def messages(self, body: dict[str, Any]) -> list[Any]:
        return list(body["messages"])

    def judged_view(self, answer: Any, state: StreamState) -> Any:
        if isinstance(answer, dict) and isinstance(answer.get("choices"), list):
            state.dropped += _drop_unjudged(answer, CHAT_ANSWER_FIELDS)
            for choice in answer["choices"]:
                if isinstance(choice, dict):
                    state.dropped += _drop_unjudged(choice, JUDGED_CHOICE_FIELDS)
                    state.dropped += _drop_unjudged(choice.get("message")) + _drop_unjudged(choice.get("delta"))
        return answer

    def blocked_answer(self, verdict: Verdict, policy: Policy, model: str, template: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = refusal(
            "openai.chat",
            policy.refusal,
            verdict,
            stage=verdict.stage or "request",
            template=template if isinstance(template, dict) else {},
            model=model,
        )
        return out

    def blocked_events(self, verdict: Verdict, policy: Policy, model: str, state: StreamState, style: str) -> bytes:
        if style == "error":
            return encode(_error_event(block_reason(verdict), "content_filter"))
        template = state.last if isinstance(state.last, dict) else {}
        chunk = refusal("openai.chat.chunk", policy.refusal, verdict, stage=verdict.stage or "request",
                        template=template, model=model)  # fmt: skip
        return encode(chunk) + DONE

    def error_events(self, message: str, code: str, state: StreamState) -> bytes:
        return encode(_error_event(message, code))

    def event_bytes(self, event: Any) -> bytes:
        return encode(event)

    def end(self) -> bytes:
        return DONE


class _Responses(Api):
    name = "responses"
    path = "responses"

    def validate(self, body: dict[str, Any], config: ServerConfig) -> None:
        super().validate(body, config)
        given = body.get("input")
        if not (isinstance(given, str) and given) and not (isinstance(given, list) and given):
            raise ApiError(400, "input must be a non-empty string or list", param="input", code="invalid_type")
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ApiError(400, "instructions must be a string", param="instructions", code="invalid_type")
        if body.get("background"):
            raise ApiError(400, "background responses are fetched later from the upstream, unjudged: not proxied",
                           param="background", code="unsupported_parameter")  # fmt: skip
        if not config.allow_stored_context:
            for key in _STORED_CONTEXT:
                if body.get(key) is not None:
                    raise ApiError(400, f"{key} refers to context kept by the upstream, which the guard cannot "
                                   "see; send the whole input (or start the server with allow_stored_context)",
                                   param=key, code="unsupported_parameter")  # fmt: skip

    def image_root(self, body: dict[str, Any]) -> Any:
        return body["input"]

    def messages(self, body: dict[str, Any]) -> list[Any]:
        given = body["input"]
        items = [{"role": "user", "content": given}] if isinstance(given, str) else list(given)
        instructions = body.get("instructions")
        return ([{"role": "system", "content": instructions}] if instructions else []) + items

    def judged_view(self, answer: Any, state: StreamState) -> Any:
        if isinstance(answer, dict):
            state.dropped += drop_unjudged_fields(answer)
            if isinstance(answer.get("sequence_number"), int):
                state.sequence = max(state.sequence, answer["sequence_number"])
            if isinstance(answer.get("response"), dict):
                state.response = answer["response"]
        return answer

    def _refusal(self, verdict: Verdict, policy: Policy, model: str, template: Any) -> dict[str, Any]:
        base = dict(template) if isinstance(template, dict) else {}
        out: dict[str, Any] = refusal("openai.responses", policy.refusal, verdict, stage=verdict.stage or "request",
                                      template=base, model=model)  # fmt: skip
        return out

    def blocked_answer(self, verdict: Verdict, policy: Policy, model: str, template: Any = None) -> dict[str, Any]:
        return self._refusal(verdict, policy, model, template)

    def _next(self, state: StreamState) -> int:
        state.sequence += 1
        return state.sequence

    def blocked_events(self, verdict: Verdict, policy: Policy, model: str, state: StreamState, style: str) -> bytes:
        if style == "error":
            return self.error_events(block_reason(verdict), "content_filter", state)
        out = b""
        if state.response is None:  # a blocked request: the stream starts here
            started = self._refusal(verdict, policy, model, None)
            created = {**started, "status": "in_progress", "incomplete_details": None, "output": []}
            event = {"type": "response.created", "sequence_number": self._next(state), "response": created}
            out += encode(event, "response.created")
        final = self._refusal(verdict, policy, model, state.response)
        event = {"type": "response.incomplete", "sequence_number": self._next(state), "response": final}
        return out + encode(event, "response.incomplete")

    def error_events(self, message: str, code: str, state: StreamState) -> bytes:
        event = {"type": "error", "code": code, "message": message, "param": None,
                 "sequence_number": self._next(state)}  # fmt: skip
        return encode(event, "error")

    def event_bytes(self, event: Any) -> bytes:
        name = event.get("type") if isinstance(event, dict) and isinstance(event.get("type"), str) else None
        return encode(event, name)

    def chunk_reader(self) -> Callable[[Any], str] | None:
        # Events repeating content (*.done, parts, items, the Response) are judged when they hold more
        # than the deltas streamed; unknown event types fail closed.
        return ResponsesEventReader()

    def final_answer(self, event: Any) -> Any:
        if isinstance(event, dict) and event.get("type") in _FINAL_EVENTS and isinstance(event.get("response"), dict):
            response = event["response"]
            return response if response.get("output") else None
        return None


CHAT: Api = _Chat()
RESPONSES: Api = _Responses()
