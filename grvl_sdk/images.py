"""Turning whatever the caller passes as an image into an RGB PIL image.

Accepted: a file path (``str`` or ``pathlib.Path``), raw bytes, a PIL image, a base64 string, or a
``data:image/...;base64,`` URL. Remote URLs are refused (download them yourself: fetching arbitrary
URLs from a guard is a server-side request forgery risk). Images are EXIF-oriented, converted to RGB
(transparency composited on white) and checked against a decompression-bomb limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from grvl_sdk._constants import DEFAULT_MAX_IMAGE_PIXELS, MAX_ASPECT_RATIO
from grvl_sdk.errors import ImageError, ImageTooLargeError

__all__ = ["ImageInput", "encode_data_url", "load_image", "load_images"]

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w=.+-]+)*?)(?P<b64>;base64)?,", re.I)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")


def _decode_base64(data: str, what: str) -> bytes:
    compact = "".join(data.split())
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"{what} is not valid base64: {exc}") from exc


def _bytes_from_string(value: str) -> tuple[bytes | None, Path | None]:
    match = _DATA_URL.match(value)
    if match:
        payload = value[match.end() :]
        if not match.group("b64"):
            raise ImageError("only base64 data: URLs are supported for images")
        return _decode_base64(payload, "the data: URL"), None
    if value.startswith(("http://", "https://", "ftp://", "file://")):
        raise ImageError(
            "image URLs are not fetched by the guard; download the image and pass its bytes, path or a data: URL"
        )
    if len(value) < 4096 and ("\x00" not in value):
        try:
            path = Path(value).expanduser()
            if path.is_file():
                return None, path
        except (OSError, RuntimeError, ValueError):  # e.g. "~user" with no such user
            pass
    if len(value) >= 16 and _BASE64_CHARS.match(value):
        return _decode_base64(value, "the image string"), None
    raise ImageError(f"image string is neither an existing file, a data: URL nor base64: {value[:80]!r}")


def _check_size(image: Image.Image, max_image_pixels: int) -> None:
    width, height = image.size
    if width * height > max_image_pixels:
        raise ImageTooLargeError(
            f"image of {width}x{height} pixels exceeds the limit of {max_image_pixels} pixels",
            width=width,
            height=height,
            limit=max_image_pixels,
        )


def _open(data: bytes | Path, max_image_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
            _check_size(image, max_image_pixels)
            image.load()
            return image
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"image file not found: {data}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageError(f"cannot read image: {type(exc).__name__}: {exc}") from exc
    except (MemoryError, OverflowError, RuntimeError, ZeroDivisionError, struct.error) as exc:
        raise ImageError(f"corrupt image: {type(exc).__name__}: {exc}") from exc


def _normalise(image: Image.Image, max_image_pixels: int) -> Image.Image:
    _check_size(image, max_image_pixels)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # PIL raises many types on broken EXIF data
        raise ImageError(f"corrupt EXIF data: {type(exc).__name__}: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(
            f"image aspect ratio {width}x{height} exceeds {MAX_ASPECT_RATIO}:1, which the vision encoder cannot take"
        )
    try:
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA"):
            canvas = Image.new("RGB", image.size, (255, 255, 255))
            canvas.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            return canvas
        return image.convert("RGB") if image.mode != "RGB" else image
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot convert image to RGB: {exc}") from exc


def load_image(
    source: Any, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_pixels: int | None = None
) -> Image.Image:
    """Load ``source`` as an RGB PIL image.

    ``max_image_pixels`` rejects larger images (decompression bombs) with :class:`ImageTooLargeError`.
    ``max_pixels``, when given, shrinks the image (keeping its aspect ratio) to at most that many pixels.
    Raises :class:`ImageError` for anything unreadable.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise ImageError("image bytes are empty")
        image = _open(bytes(source), max_image_pixels)
    elif isinstance(source, os.PathLike):
        image = _open(Path(source), max_image_pixels)
    elif isinstance(source, str):
        data, path = _bytes_from_string(source)
        image = _open(data if data is not None else path, max_image_pixels)  # type: ignore[arg-type]
    else:
        raise ImageError(
            f"unsupported image type {type(source).__name__}: pass a path, bytes, a PIL image, base64 or a data: URL"
        )
    image = _normalise(image, max_image_pixels)
    if max_pixels is not None and image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def load_images(
    image: Any = None, images: Any = None, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> list[Image.Image]:
    """Load ``image`` and/or ``images`` (a list) in order; ``None`` gives no image."""
    sources: list[Any] = []
    if image is not None:
        sources.append(image)
    if images is not None:
        if isinstance(images, (str, bytes, bytearray, os.PathLike, Image.Image)):
            raise ImageError("images= takes a list of images; pass a single image as image=")
        try:
            sources.extend(images)
        except TypeError as exc:
            raise ImageError(f"images= must be a list, got {type(images).__name__}") from exc
    return [load_image(s, max_image_pixels=max_image_pixels) for s in sources]


def encode_data_url(image: Image.Image, *, format: str = "PNG") -> str:
    """Encode a PIL image as a ``data:`` URL (lossless PNG by default)."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    mime = f"image/{format.lower()}"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
