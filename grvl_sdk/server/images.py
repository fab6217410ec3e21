"""Images in requests: remote URLs fetched under the allowlist and inlined, everything else refused
unless it is a ``data:`` URL — so the guard and the upstream see the same bytes, and no request can make
the server read one of its own files.

* :class:`ImageInliner` replaces ``http(s)`` image URLs in image parts (``image_url``, ``input_image``,
  ``image`` with ``url`` / ``image`` / ``source.url``) by ``data:`` URLs of the fetched bytes, through
  :class:`grvl_sdk.fetch.ImageFetcher` (allowlist, public addresses only after DNS resolution and on every
  redirect, size and time limits). With an empty allowlist (the default) any image URL is a 400.
* :func:`audit_messages` runs on the normalised messages (:func:`grvl_sdk.messages.to_messages`) after
  that: every image must be a base64 ``data:`` URL (a path, a ``file://`` URL or a URL left in a place
  the inliner does not know is refused), at most ``max_images`` per request, at most
  ``max_text_chars`` characters of text.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import warnings
from collections.abc import Iterator
from typing import Any

import anyio
from PIL import Image

from grvl_sdk.errors import InputError
from grvl_sdk.fetch import FetchPolicy, ImageFetcher
from grvl_sdk.messages import Message, RemoteImage
from grvl_sdk.server.errors import ApiError

__all__ = ["ImageInliner", "audit_answer", "audit_messages", "is_data_url", "make_fetcher"]

#: The data: URLs ``grvl_sdk.images.load_image`` decodes (the same pattern), base64 required.
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w=.+-]+)*?)(?P<b64>;base64)?,", re.I)
_BASE64 = re.compile(r"[A-Za-z0-9+/=_\-\s]+")
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_MAX_NODES = 1_000_000


def is_data_url(value: Any) -> bool:
    """A base64 ``data:`` URL that the image loader decodes (never read as a path)."""
    if not isinstance(value, str):
        return False
    match = _DATA_URL.match(value)
    return bool(match and match.group("b64"))


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


def make_fetcher(
    allow: tuple[str, ...], *, allow_http: bool, max_bytes: int, timeout: float, max_redirects: int
) -> ImageFetcher | None:
    """The server's fetcher, or ``None`` when nothing is allowed (image URLs are then refused)."""
    if not allow:
        return None
    policy = FetchPolicy(allow=allow, allow_http=allow_http, max_bytes=max_bytes, timeout=timeout,
                         max_redirects=max_redirects)  # fmt: skip
    return ImageFetcher(policy)


def _slots(root: Any) -> Iterator[tuple[Any, Any]]:
    """``(container, key)`` of each http(s) URL in an image part below ``root`` (iterative walk)."""
    stack = [root]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            raise ApiError(400, "the request has too many JSON values", code="request_too_large")
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if (isinstance(kind, str) and kind in _IMAGE_PARTS) or ("image_url" in node and kind is None):
            for key in ("image_url", "url", "image"):
                value = node.get(key)
                if _is_url(value):
                    yield node, key
                elif isinstance(value, dict) and _is_url(value.get("url")):
                    yield value, "url"
            source = node.get("source")
            if isinstance(source, dict) and _is_url(source.get("url")):
                yield source, "url"
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))


def _mime(data: bytes, url: str) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format
    except Exception:  # PIL raises many types on junk
        raise ApiError(400, f"the image at {url[:200]} is not a readable image", code="invalid_image") from None
    return Image.MIME.get(kind or "", "application/octet-stream")


class ImageInliner:
    """Fetches the image URLs of a request (see the module docstring); ``fetcher`` ``None`` refuses them."""

    def __init__(self, fetcher: ImageFetcher | None) -> None:
        self.fetcher = fetcher

    async def source(self, url: str) -> str:
        """The image at ``url`` as a ``data:`` URL (400 when refused or failed)."""
        if self.fetcher is None:
            raise ApiError(400, "image URLs are not fetched by this server (no image allowlist is configured); "
                           "send the image as a base64 data: URL", code="image_url_not_allowed")  # fmt: skip
        try:
            data = await self.fetcher.afetch(url)
        except InputError as exc:
            raise ApiError(400, exc.message, code=exc.code) from None
        mime = await anyio.to_thread.run_sync(_mime, data, url)
        return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")

    async def inline(self, root: Any, *, max_images: int) -> int:
        """Replace every image URL in image parts below ``root`` (in place); returns how many."""
        slots = list(_slots(root))
        if not slots:
            return 0
        if len(slots) > max_images:
            raise ApiError(400, f"{len(slots)} image URLs; at most {max_images} images per request",
                           code="too_many_images")  # fmt: skip
        if self.fetcher is None:
            await self.source(slots[0][0][slots[0][1]])  # raises: nothing may be fetched
        results = await asyncio.gather(*(self.source(container[key]) for container, key in slots),
                                       return_exceptions=True)  # fmt: skip
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for (container, key), data_url in zip(slots, results):  # noqa: B905 - same length
            container[key] = data_url
        return len(slots)

    async def any_image(self, value: Any, where: str) -> str:
        """One image given as an http(s) URL, a data: URL or bare base64 (LiteLLM's ``images``)."""
        if _is_url(value):
            return await self.source(value)
        if is_data_url(value):
            return str(value)
        if isinstance(value, str) and len(value) >= 16 and _BASE64.fullmatch(value):
            return "data:;base64," + value
        raise ApiError(400, f"{where}: an image must be a base64 string, a data: URL or an http(s) URL",
                       param=where, code="invalid_image")  # fmt: skip

    async def aclose(self) -> None:
        if self.fetcher is not None:
            await self.fetcher.aclose()


def audit_messages(messages: list[Message], *, max_images: int, max_text_chars: int) -> None:
    """Refuse what the guard must not or cannot take (see the module docstring)."""
    images = [image for message in messages for image in message.images]
    if len(images) > max_images:
        raise ApiError(400, f"{len(images)} images in the request; at most {max_images} are judged per request",
                       code="too_many_images")  # fmt: skip
    for image in images:
        if isinstance(image, RemoteImage):
            raise ApiError(400, "image URLs are only fetched in image_url / input_image parts, and only when the "
                           "server's image allowlist admits them; send a base64 data: URL",
                           code="image_url_not_allowed")  # fmt: skip
        if not is_data_url(image):
            raise ApiError(400, "images must be base64 data: URLs or http(s) URLs; paths and other sources are "
                           "refused", code="invalid_image")  # fmt: skip
    chars = sum(len(message.text) for message in messages)
    if chars > max_text_chars:
        raise ApiError(400, f"{chars} characters of text; at most {max_text_chars} are judged per request",
                       code="request_too_long")  # fmt: skip


def audit_answer(answer: Any) -> None:
    """Refuse (502) an upstream answer whose images are not base64 ``data:`` URLs: judging it would make the
    guard read a path or fetch a URL the upstream chose (the server reads none of its own files)."""
    from grvl_sdk.messages import response_messages

    for message in response_messages(answer):  # InputError for an answer the guard cannot read
        if any(not is_data_url(image) for image in message.images):
            raise ApiError(502, "the upstream's answer holds an image that is not a base64 data: URL; it is "
                           "neither judged nor passed on", code="upstream_unjudgeable")  # fmt: skip
