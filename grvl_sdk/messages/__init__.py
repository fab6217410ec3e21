"""One message model: every shape users pass to the guard, normalised to :class:`Message` / :class:`Delta`.

A pure module (no guard calls, no image loading, no network). Three entry points:

- :func:`to_messages` (request side): a string, a list of messages of any supported shape (mixed), a
  LangChain ``PromptValue``, or a single message -> ``list[Message]``.
- :func:`response_messages` (response side): one assistant :class:`Message` per choice / candidate.
- :func:`chunk_deltas` (stream side): the text each chunk adds, per choice index (:class:`Delta`).

Sources: OpenAI Chat Completions and Responses (dicts or ``openai`` SDK objects), Anthropic Messages
(dicts or ``anthropic`` SDK objects), LangChain messages, tuples, content blocks and ``PromptValue``\\s,
Google Gemini ``Content`` / ``candidates``, and this SDK's ``{"type": "image", "image": ...}`` parts.
Dicts and objects are read alike (``value[key]`` or ``value.key``), so an SDK object and its
``model_dump()`` give the same result.

Rules:

1. **Everything the model sees or says is kept, or the input is refused with**
   :class:`~grvl_sdk.errors.InputError`; **nothing is silently skipped.** Text parts of every role;
   ``refusal`` parts and fields as text; tool calls as ``[tool call] name(arguments)`` (OpenAI
   ``tool_calls[].function`` / ``custom``, legacy ``function_call``, Responses ``function_call`` /
   ``custom_tool_call`` items, Anthropic ``tool_use`` / ``server_tool_use`` with ``input`` as compact
   JSON, LangChain ``tool_calls`` / ``invalid_tool_calls`` / ``tool_call_chunks`` and ``tool_call``
   blocks, Gemini ``function_call``); string arguments are kept verbatim, others dumped as compact JSON.
   Tool results (``role`` ``tool`` / ``function``, Responses ``function_call_output`` /
   ``custom_tool_call_output``, Anthropic ``tool_result`` blocks, Gemini ``function_response``) are
   ``tool`` messages with their text and images, ``name`` being the tool's name when it is given or
   known from an earlier call with the same id. Readable reasoning (LangChain ``reasoning``, Anthropic
   ``thinking``, Responses ``reasoning`` items' ``summary`` / ``content`` texts) is text of its turn;
   opaque reasoning (``redacted_thinking``, encrypted-only ``reasoning``) carries nothing readable and
   adds nothing. Roles: ``user`` / ``human`` -> user; ``assistant`` / ``ai`` / ``model`` -> assistant;
   ``system`` / ``developer`` -> system; ``tool`` / ``function`` -> tool; any other role is refused.
   Other message fields (ids, annotations, cache control, participant names) are metadata and ignored;
   a message without ``content`` but with a ``text`` string reads that text. A :class:`Message` passes
   through unchanged. Unknown message / item types (Responses ``web_search_call``, ``item_reference``...)
   are refused.
2. **Images in any role** are kept as sources, in order, not loaded: a ``data:`` URL stays a string, an
   ``http(s)`` URL becomes :class:`RemoteImage` (never fetched here: the caller fetches it with an
   allowlist, or refuses). Wire shapes (OpenAI ``image_url``, Responses ``input_image``, Anthropic
   ``source``, LangChain ``url`` / ``base64``) must carry an ``http(s)`` or ``data:`` URL (base64 becomes
   a ``data:`` URL); any other string there (a path, ``file://``) is refused, so a request can never
   make the guard read a local file. Only the SDK form ``{"type": "image", "image": X}`` passes ``X``
   (a path, bytes, a PIL image, base64, a URL) through. Images given by ``file_id`` are refused (they
   cannot be judged without the file), and so are audio, files / documents, video and unknown blocks,
   naming the block type: the guard must not wave through what it cannot see.
3. **Several choices**: :func:`response_messages` returns one message per choice / candidate, sorted by
   its ``index``; :func:`chunk_deltas` keeps each choice's index, so ``n`` streamed choices can be
   accumulated apart. A ``ChatCompletionChunk`` gives one :class:`Delta` per choice it carries (text
   possibly empty); Responses / Anthropic events give one only when they carry text.
4. **Objects and dicts alike** (see above); LangChain classes are read through their fields.
5. **Bytes**: ``chunk_deltas(b"...")`` raises :class:`~grvl_sdk.errors.InputError`: the stream reader
   decodes bytes itself, incrementally (a UTF-8 character can span chunks).
6. **Text**: the parts of one message are joined with ``"\\n"`` in their order (content parts as they
   come, then the ``refusal`` field, then ``function_call`` / ``tool_calls``); empty parts add nothing;
   a message with no text has ``text == ""``. In a :class:`Delta`, a chunk's fragments are concatenated
   (a tool call's name arrives as ``[tool call] name``, its arguments verbatim after it). Wrong types
   (content that is an int, a part that is not an object or string, a tool call without a name) raise
   :class:`~grvl_sdk.errors.InputError` whose message and ``details`` name the ``index`` and ``field``.
"""

from __future__ import annotations

from grvl_sdk.messages._api import chunk_deltas, response_messages, to_messages
from grvl_sdk.messages._base import Delta, Message, RemoteImage, Role

__all__ = ["Delta", "Message", "RemoteImage", "Role", "chunk_deltas", "response_messages", "to_messages"]
