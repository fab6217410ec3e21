"""Image sources in content blocks: kept as sources (never loaded or fetched here).

- OpenAI Chat Completions ``image_url`` (``{"url", "detail"}`` or a string), Responses ``input_image``
  (``image_url``; ``file_id`` refused).
- Anthropic ``image`` ``source``: ``base64`` (``media_type``, ``data``) -> a ``data:`` URL, ``url``;
  ``file`` refused.
- LangChain ``image`` blocks: ``base64`` + ``mime_type`` -> a ``data:`` URL, ``url``; v0.3
  ``source_type`` ``base64`` / ``url`` (``id`` refused); ``file_id`` refused.
- This SDK: ``{"type": "image", "image": X}``, ``X`` anything :func:`grvl_sdk.images.load_image` takes.

An ``http(s)`` URL becomes :class:`~grvl_sdk.messages.RemoteImage`; a ``data:`` URL stays a string.
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

from grvl_sdk.messages._base import Loc, RemoteImage, get, type_name


def url_image(url: Any, loc: Loc) -> Any:
    """An image URL of a wire format: ``http(s)`` -> :class:`RemoteImage`, ``data:`` -> the string.

    Any other string (a local path, ``file://``, bare base64) is refused: wire formats carry URLs, and a
    path in a request must never make the guard read a local file.
    """
    if not isinstance(url, str):
        loc.fail(f"image URL must be a string, got {type_name(url)}")
    lowered = url[:8].lower()
    if lowered.startswith(("http://", "https://")):
        return RemoteImage(url)
    if lowered.startswith("data:"):
        return url
    loc.fail("image URL must be an http(s):// or data: URL")


def base64_image(data: Any, mime_type: Any, loc: Loc) -> str:
    """Base64 image data (and its MIME type) as a ``data:`` URL."""
    if not isinstance(data, str):
        loc.fail(f"base64 image data must be a string, got {type_name(data)}")
    if data[:5].lower() == "data:":
        return data
    if mime_type is not None and not isinstance(mime_type, str):
        loc.fail(f"image MIME type must be a string, got {type_name(mime_type)}")
    return f"data:{mime_type or ''};base64,{data}"


_SDK_IMAGE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)


def sdk_image(value: Any, loc: Loc) -> Any:
    """The SDK's ``{"type": "image", "image": ...}``: anything :func:`grvl_sdk.images.load_image` takes."""
    if not isinstance(value, _SDK_IMAGE_TYPES):
        loc.fail(f"an image must be a path, bytes, a PIL image, base64 or a URL, got {type_name(value)}")
    if isinstance(value, str) and value[:8].lower().startswith(("http://", "https://")):
        return RemoteImage(value)
    return value


def image_of(part: Any, kind: str, loc: Loc) -> Any:
    """The image source of an ``image_url``, ``input_image`` or ``image`` block (not loaded)."""
    if kind == "image_url":
        value = get(part, "image_url")
        if isinstance(value, str):
            return url_image(value, loc.at("image_url"))
        if value is None:
            loc.fail("image_url part has no image_url")
        return url_image(get(value, "url"), loc.at("image_url").at("url"))
    if kind == "input_image":
        if get(part, "image_url") is not None:
            return url_image(get(part, "image_url"), loc.at("image_url"))
        if get(part, "file_id") is not None:
            loc.fail("an input_image given by file_id cannot be judged without the file; pass image_url")
        loc.fail("input_image has no image_url")
    if get(part, "image") is not None:
        return sdk_image(get(part, "image"), loc.at("image"))
    source = get(part, "source")
    if source is not None:
        return _anthropic_source(source, loc.at("source"))
    source_type = get(part, "source_type")
    if source_type is not None:  # LangChain v0.3 data blocks
        if source_type == "base64":
            return base64_image(get(part, "data"), get(part, "mime_type"), loc.at("data"))
        if source_type == "url":
            return url_image(get(part, "url"), loc.at("url"))
        loc.at("source_type").fail(f"an image of source_type {str(source_type)[:20]!r} cannot be judged")
    if get(part, "base64") is not None:
        return base64_image(get(part, "base64"), get(part, "mime_type"), loc.at("base64"))
    if get(part, "url") is not None:
        return url_image(get(part, "url"), loc.at("url"))
    if get(part, "file_id") is not None:
        loc.fail("an image given by file_id cannot be judged without the file; pass base64 or url")
    loc.fail("image block has no image (image, source, base64 or url)")


def _anthropic_source(source: Any, loc: Loc) -> Any:
    kind = get(source, "type")
    if kind == "base64":
        return base64_image(get(source, "data"), get(source, "media_type"), loc.at("data"))
    if kind == "url":
        return url_image(get(source, "url"), loc.at("url"))
    if kind == "file":
        loc.fail("an image given by file_id cannot be judged without the file; pass base64 or url")
    loc.at("type").fail(f"unsupported image source type {str(kind)[:20]!r}")
