"""Turning whatever the caller passes as an image into an RGB PIL image, and the one resize rule.

Accepted: a file path (``str`` or ``pathlib.Path``), raw bytes, a PIL image, a base64 string, or a
``data:image/...;base64,`` URL. Remote URLs are refused (download them yourself: fetching arbitrary
URLs from a guard is a server-side request forgery risk). Images are EXIF-oriented, converted to 8-bit
RGB and checked against a decompression-bomb limit. Every failure is an :class:`ImageError`.

Files: only regular files are read. A path is opened non-blocking and checked on the open descriptor,
so a FIFO, a device (``/dev/zero``), a directory or a socket is refused at once instead of blocking or
reading forever, and nothing can swap the file between the check and the read.

Pixel modes are converted to 8-bit RGB faithfully (16-bit and float images scaled, never clipped) or
refused: the rules are in :mod:`grvl_sdk._image_modes`.

Original bytes: when an image given as bytes, base64, a ``data:`` URL or a file decodes to exactly what
any PIL-based reader gets from them (see :func:`original_bytes`), the loaded image remembers them, so the
remote backend can send them instead of re-encoding the pixels.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import io
import math
import os
import re
import stat
import struct
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from grvl_sdk._constants import DEFAULT_MAX_IMAGE_PIXELS, MAX_ASPECT_RATIO, MAX_IMAGES_PER_CHECK
from grvl_sdk._image_modes import to_rgb
from grvl_sdk.errors import ImageError, ImageTooLargeError, InputError

__all__ = [
    "ImageInput",
    "OriginalBytes",
    "encode_data_url",
    "load_image",
    "load_images",
    "original_bytes",
    "resize_to_grid",
    "smart_resize",
]

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w=.+-]+)*?)(?P<b64>;base64)?,", re.I)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
_MAX_PATH_CHARS = 4096
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


# -- sources --------------------------------------------------------------------------------------


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _decode_base64(data: str, what: str) -> bytes:
    compact = "".join(data.split())
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"{what} is not valid base64: {exc}") from exc


def _looks_like_path(value: str) -> bool:
    """A short string with a path separator or an image file suffix: a missing file, not bad base64."""
    return len(value) < _MAX_PATH_CHARS and ("/" in value or "\\" in value or value.lower().endswith(_IMAGE_SUFFIXES))


def _existing_path(value: str) -> Path | None:
    """``value`` as a path when something exists there (of any file type), else ``None``."""
    if not value.strip() or len(value) >= _MAX_PATH_CHARS or "\x00" in value:
        return None
    try:
        path = Path(value).expanduser()
        path.stat()
    except PermissionError:
        return path  # reported when opened
    except (OSError, RuntimeError, ValueError):  # missing, name too long, "~user" with no such user
        return None
    return path


def _bytes_from_string(value: str) -> tuple[bytes | None, Path | None]:
    """``(data, None)`` for a data: URL or base64, ``(None, path)`` for an existing path."""
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
    if not value.strip():
        raise ImageError("image string is empty")
    path = _existing_path(value)
    if path is not None:
        return None, path
    if len(value) >= 16 and _BASE64_CHARS.match(value):
        try:
            return _decode_base64(value, "the image string"), None
        except ImageError:
            if not _looks_like_path(value):
                raise
    if _looks_like_path(value):
        raise ImageError(f"image file not found: {value}")
    raise ImageError(f"image string is neither an existing file, a data: URL nor base64: {value[:80]!r}")


@contextlib.contextmanager
def _regular_file(path: str | bytes) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading if it is a regular file; refuse FIFOs, devices, directories, sockets.

    The open is non-blocking (a FIFO with no writer would block ``open()`` forever) and the type is
    checked on the open descriptor, so the file checked is the file read.
    """
    name = os.fsdecode(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError as exc:
        raise ImageError(f"image file not found: {name}") from exc
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO/device with nothing behind it
            raise ImageError(f"image path {name} is not a regular file") from exc
        raise ImageError(f"cannot open image file {name}: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
            raise ImageError(f"image path {name} is not a regular file ({kind})")
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield file


def _check_size(image: Image.Image, max_image_pixels: int) -> None:
    width, height = image.size
    if width * height > max_image_pixels:
        raise ImageTooLargeError(
            f"image of {width}x{height} pixels exceeds the limit of {max_image_pixels} pixels",
            width=width,
            height=height,
            limit=max_image_pixels,
        )


#: ``Image.info`` key: the (width, height) of a JPEG decoded at reduced size (``draft``), before it.
_FULL_SIZE = "grvl_full_size"


#: The model's pixel bounds ``(min_pixels, max_pixels)``: images are resized to :func:`smart_resize`'s grid.
Grid = tuple[int, int]


def _target_size(width: int, height: int, max_pixels: int | None, grid: Grid | None) -> tuple[int, int]:
    """The (width, height) an image of ``width`` x ``height`` ends at: shrunk to ``max_pixels`` (aspect
    kept), then to the model's ``grid``. Symmetric in width and height."""
    if max_pixels is not None and width * height > max_pixels:
        scale = (max_pixels / (width * height)) ** 0.5
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
    if grid is not None:
        height, width = smart_resize(height, width, min_pixels=grid[0], max_pixels=grid[1])
    return width, height


def _draft(image: Image.Image, max_pixels: int | None, grid: Grid | None) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (in the DCT: no full-size decode) when the final
    resize would shrink it at least that much; the full size is kept in ``image.info``."""
    if image.format != "JPEG" or (max_pixels is None and grid is None):
        return
    full = image.size
    try:
        target = _target_size(full[0], full[1], max_pixels, grid)
    except InputError:  # a bad size for the grid: reported by the resize after the full decode
        return
    if target[0] < full[0] and target[1] < full[1]:
        image.draft(image.mode, target)
        if image.size != full:
            image.info[_FULL_SIZE] = full


def _open(
    data: bytes | IO[bytes], max_image_pixels: int, max_pixels: int | None = None, grid: Grid | None = None
) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
            _check_size(image, max_image_pixels)
            _draft(image, max_pixels, grid)
            image.load()
            return image
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # PIL names the in-memory file by its repr (a heap address): not for error messages sent to callers
        detail = _OBJECT_REPR.sub("the image data", str(exc))
        raise ImageError(f"cannot read image: {type(exc).__name__}: {detail}") from exc
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
        return to_rgb(image)
    except ImageError:
        raise
    except Exception as exc:  # PIL raises many types on odd or corrupt data
        raise ImageError(f"cannot convert {image.mode} image to RGB: {type(exc).__name__}: {exc}") from exc


# -- original bytes -------------------------------------------------------------------------------

#: Formats whose bytes are kept (``Image.format`` -> MIME type): what OpenAI-compatible servers accept.
_ORIGINAL_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class OriginalBytes:
    """The encoded bytes a loaded image was decoded from, and their MIME type (``image/jpeg``,
    ``image/png`` or ``image/webp``)."""

    data: bytes
    mime: str


#: id(image) -> (its original bytes, the pixel buffer (``image.im``) they decode to); an entry is removed
#: when its image is garbage-collected (before the id can be reused), and derived images (resize, copy,
#: convert...) are new objects with no entry.
_ORIGINALS: dict[int, tuple[OriginalBytes, Any]] = {}


def original_bytes(image: Image.Image) -> OriginalBytes | None:
    """The bytes ``image`` was loaded from by :func:`load_image` / :func:`load_images`, when a plain
    decode of them gives exactly its pixels; else ``None``.

    Kept only when all hold: the source was bytes, base64, a ``data:`` URL or a regular file; the format
    is JPEG, PNG or WebP with a single frame; the decoded mode is ``RGB`` or ``L`` with no transparent
    colour; no EXIF orientation other than 1; decoded at full size (no JPEG draft) and not resized; the
    bytes are no larger than the raw RGB pixels (``3 * width * height``). Then ``Image.open(data)
    .convert("RGB")`` — what vLLM and SGLang do with an image URL — equals ``image`` pixel for pixel (for
    JPEG and lossy WebP: with the same decoder, libjpeg-turbo / libwebp as bundled by Pillow). The bytes
    carry the file's metadata (EXIF, ICC profile) too. Not kept while ``ImageFile.LOAD_TRUNCATED_IMAGES``
    is set (a truncated file would load here, grey-filled, but fail on a server without that setting). A
    file is read once, and decoded from the bytes read, so the bytes kept are the bytes decoded even if the
    file changes meanwhile.

    An image that keeps its bytes is copy-on-write (Pillow's ``readonly``): editing it in place through
    Pillow (``paste``, ``ImageDraw``, ``putpixel``, ``putdata``, ``thumbnail``...) first gives it its own
    pixel buffer, and from then on this returns ``None``, so the edited pixels are what is sent. Writing
    through ``image.load()[x, y]`` raises ``ValueError`` (copy the image first); ``Image.frombytes`` into
    it, or writes through ``image.im``, bypass Pillow's check: do not.
    """
    entry = _ORIGINALS.get(id(image))
    if entry is None:
        return None
    original, pixels = entry
    try:
        unchanged = bool(image.readonly) and image.im is pixels
    except Exception:  # a closed image: nothing to send
        unchanged = False
    if unchanged:
        return original
    _ORIGINALS.pop(id(image), None)  # edited in place: the bytes no longer describe it
    return None


def _plain_mime(image: Image.Image) -> str | None:
    """The MIME type of an opened (not yet normalised) image whose bytes decode, with a plain
    ``Image.open(...).convert("RGB")``, to exactly what :func:`_finish` makes of it; else ``None``."""
    mime = _ORIGINAL_FORMATS.get(image.format or "")
    if mime is None or getattr(image, "n_frames", 1) != 1 or _FULL_SIZE in image.info:
        return None
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # the bytes may be truncated: a plain decode elsewhere fails on them
        return None
    if image.mode not in ("RGB", "L") or "transparency" in image.info:  # to_rgb composites those on white
        return None
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # PIL raises many types on broken EXIF data (reported by _normalise)
        return None
    return mime if orientation == 1 else None


def _keep_original(frames: list[Image.Image], opened: tuple[int, int], data: bytes, mime: str | None) -> None:
    """Remember ``data`` for the one loaded frame when it was not resized and the bytes are not larger
    than its raw pixels."""
    if mime is None or len(frames) != 1:
        return
    image = frames[0]
    if image.size != opened or image.mode != "RGB" or len(data) > 3 * image.width * image.height:
        return
    image.readonly = 1  # copy-on-write: an edit through Pillow gives it a new pixel buffer (see original_bytes)
    key = id(image)
    _ORIGINALS[key] = (OriginalBytes(data, mime), image.im)
    weakref.finalize(image, _ORIGINALS.pop, key, None).atexit = False


def _read_candidate(file: IO[bytes], max_image_pixels: int, max_pixels: int | None, grid: Grid | None) -> bytes | None:
    """The whole (regular) file, read once, when its bytes may be kept (:func:`original_bytes`): a JPEG,
    PNG or WebP whose header size the resize keeps, no larger than its raw RGB pixels; else ``None``.

    The image is then decoded from these bytes, never from the file again: a file rewritten while it
    is loaded cannot make the bytes kept differ from the bytes decoded."""
    bound = min(n for n in (max_image_pixels, max_pixels, grid[1] if grid else None) if n is not None)
    try:
        size = os.fstat(file.fileno()).st_size
        if size > 3 * bound:  # larger than the raw pixels of any image that can keep its bytes
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = Image.open(file, formats=tuple(_ORIGINAL_FORMATS))  # the header only
        width, height = header.size
        del header  # (WebP holds the whole file)
        if width * height > bound or size > 3 * width * height:
            return None
        if _target_size(width, height, max_pixels, grid) != (width, height):
            return None
        file.seek(0)
        data = file.read(3 * width * height + 1)
    except Exception:  # unreadable or not one of those formats: decoded (and reported) from the file
        return None
    finally:
        with contextlib.suppress(OSError, ValueError):
            file.seek(0)
    return data if len(data) <= 3 * width * height else None


# -- loading --------------------------------------------------------------------------------------


def _finish(image: Image.Image, max_image_pixels: int, max_pixels: int | None, grid: Grid | None) -> Image.Image:
    """Normalised, then resized once to the ``max_pixels`` budget and the ``grid`` — the size computed
    from the full size even when a JPEG was decoded at reduced size (:func:`_draft`), so the result's
    size does not depend on how it was decoded."""
    full = image.info.get(_FULL_SIZE)
    decoded = image.size
    image = _normalise(image, max_image_pixels)
    width, height = image.size
    if isinstance(full, tuple):
        width, height = full if image.size == decoded else (full[1], full[0])  # EXIF may have transposed it
    size = _target_size(width, height, max_pixels, grid)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def _finish_frames(
    image: Image.Image, max_image_pixels: int, max_pixels: int | None, frames: bool, grid: Grid | None = None
) -> list[Image.Image]:
    """The image (``frames=False``: its first frame), or every frame of an animated or multi-page one."""
    count = getattr(image, "n_frames", 1) if frames else 1
    if not isinstance(count, int) or count <= 1:
        return [_finish(image, max_image_pixels, max_pixels, grid)]
    if count > MAX_IMAGES_PER_CHECK:
        raise ImageError(
            f"a multi-frame image (animated or multi-page) of {count} frames: at most {MAX_IMAGES_PER_CHECK} "
            "frames can be judged in one check; pass the frames that matter as images="
        )
    out = []
    try:
        for index in range(count):
            image.seek(index)
            out.append(_finish(image.copy(), max_image_pixels, max_pixels, grid))
    except ImageError:
        raise
    except Exception as exc:  # PIL raises many types on corrupt frames
        raise ImageError(f"cannot read frame {len(out) + 1} of {count}: {type(exc).__name__}: {exc}") from exc
    return out


def _load_file(
    path: str | bytes, max_image_pixels: int, max_pixels: int | None, frames: bool, grid: Grid | None = None
) -> list[Image.Image]:
    with _regular_file(path) as file:  # kept open until converted: multi-frame files read lazily
        data = _read_candidate(file, max_image_pixels, max_pixels, grid)
        if data is not None:  # decoded from the bytes read, which are the bytes kept
            image = _open(data, max_image_pixels, max_pixels, grid)
            return _finish_bytes(image, data, max_image_pixels, max_pixels, frames, grid)
        image = _open(file, max_image_pixels, max_pixels, grid)
        return _finish_frames(image, max_image_pixels, max_pixels, frames, grid)


def _finish_bytes(
    image: Image.Image, data: bytes, max_image_pixels: int, max_pixels: int | None, frames: bool, grid: Grid | None
) -> list[Image.Image]:
    """:func:`_finish_frames` of ``image``, opened from ``data``, remembering ``data`` where it can."""
    mime, opened = _plain_mime(image), image.size
    loaded = _finish_frames(image, max_image_pixels, max_pixels, frames, grid)
    _keep_original(loaded, opened, data, mime)
    return loaded


def _load(
    source: Any, max_image_pixels: int, max_pixels: int | None, frames: bool, grid: Grid | None = None
) -> list[Image.Image]:
    if isinstance(source, Image.Image):
        return _finish_frames(source, max_image_pixels, max_pixels, frames, grid)
    if isinstance(source, (bytes, bytearray, memoryview)):
        try:
            data = bytes(source)
        except (TypeError, ValueError, BufferError, NotImplementedError) as exc:  # e.g. a strided memoryview
            raise ImageError(f"cannot read image bytes from a {type(source).__name__}: {exc}") from exc
        if not data:
            raise ImageError("image bytes are empty")
        image = _open(data, max_image_pixels, max_pixels, grid)
        return _finish_bytes(image, data, max_image_pixels, max_pixels, frames, grid)
    if isinstance(source, os.PathLike):
        try:
            path = os.fspath(source)
        except TypeError as exc:
            raise ImageError(f"bad image path: {exc}") from exc
        return _load_file(path, max_image_pixels, max_pixels, frames, grid)
    if isinstance(source, str):
        decoded, found = _bytes_from_string(source)
        if found is not None:
            return _load_file(str(found), max_image_pixels, max_pixels, frames, grid)
        assert decoded is not None  # a string names a file, or holds the data
        try:
            image = _open(decoded, max_image_pixels, max_pixels, grid)
        except ImageTooLargeError:
            raise
        except ImageError as exc:
            if _looks_like_path(source) and not _DATA_URL.match(source):
                raise ImageError(f"image file not found: {source} (nor is it base64 image data: {exc})") from exc
            raise
        return _finish_bytes(image, decoded, max_image_pixels, max_pixels, frames, grid)
    raise ImageError(
        f"unsupported image type {type(source).__name__}: pass a path, bytes, a PIL image, base64 or a data: URL"
    )


def load_image(
    source: Any, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_pixels: int | None = None
) -> Image.Image:
    """Load ``source`` as an 8-bit RGB PIL image (pixel modes converted as the module docstring says).

    Returns the **first frame** of an animated or multi-page image; :func:`load_images` (what the guard
    uses) returns every frame. An image that keeps its original bytes (:func:`original_bytes`) is
    copy-on-write: Pillow edits work (on a private copy of the pixels), ``image.load()[x, y] = ...``
    raises ``ValueError`` (edit a ``copy()``). ``max_image_pixels`` rejects larger images (decompression bombs) with
    :class:`ImageTooLargeError`. ``max_pixels``, when given, shrinks the image (keeping its aspect ratio)
    to at most that many pixels. Raises :class:`ImageError` for anything unreadable: missing or
    non-regular file, bad base64, corrupt data, an unsupported pixel mode or value range, an aspect
    ratio over 200:1.
    """
    return _load(source, max_image_pixels, max_pixels, frames=False)[0]


def load_images(
    image: Any = None,
    images: Any = None,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    grid: Grid | None = None,
) -> list[Image.Image]:
    """Load ``image`` and/or ``images`` (a list) in order; ``None`` gives no image.

    ``grid``: the model's ``(min_pixels, max_pixels)``; each image is then resized once to
    :func:`smart_resize`'s size for its full size (what :func:`resize_to_grid` gives), and a JPEG is
    decoded at 1/2, 1/4 or 1/8 scale where that still covers the target (no full-size decode).

    An animated or multi-page image gives **all its frames**, in order (every frame may hold content:
    judging only the first would let the others through unseen); more than
    :data:`~grvl_sdk._constants.MAX_IMAGES_PER_CHECK` frames in one image is an :class:`ImageError`."""
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
    return [frame for s in sources for frame in _load(s, max_image_pixels, None, True, grid)]


def encode_data_url(image: Image.Image, *, format: str = "PNG") -> str:
    """Encode a PIL image as a ``data:`` URL (lossless PNG by default)."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    mime = f"image/{format.lower()}"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


# -- the resize rule ------------------------------------------------------------------------------


def smart_resize(height: int, width: int, *, factor: int = 28, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The size (height, width), in pixels, that Qwen2.5-VL's image processor resizes an image to.

    The same rule as ``smart_resize`` in transformers' ``Qwen2VLImageProcessor`` (which Qwen2.5-VL
    uses), reimplemented so the core does not need transformers: each side is rounded to a multiple of
    ``factor`` (patch 14 x merge 2 = 28); if that is over ``max_pixels`` both sides shrink by the same
    scale, rounded down to multiples of ``factor`` (at least ``factor``); if under ``min_pixels`` they
    grow, rounded up. The vision encoder then sees ``height * width / factor**2`` tokens (``/ 784``).

    Raises :class:`ImageError` when a side is under 1 pixel or the aspect ratio exceeds 200:1
    (``MAX_ASPECT_RATIO``), and :class:`InputError` for ``factor`` < 1, ``min_pixels`` < 0 or
    ``max_pixels`` < 1.
    """
    if factor < 1 or min_pixels < 0 or max_pixels < 1:
        raise InputError(f"bad resize settings: factor={factor}, min_pixels={min_pixels}, max_pixels={max_pixels}")
    if height < 1 or width < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ImageError(
            f"image aspect ratio {width}x{height} exceeds {MAX_ASPECT_RATIO}:1, which the vision encoder cannot take"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_to_grid(image: Image.Image, *, min_pixels: int, max_pixels: int) -> Image.Image:
    """Resize ``image`` to :func:`smart_resize`'s size (multiples of 28 pixels) with bicubic resampling.

    The same target size and resampling as Qwen2.5-VL's image processor, so the model sees the same
    pixels whichever path prepared them. An image already at that size is returned unchanged (the same
    object). Raises :class:`ImageError` as :func:`smart_resize` does.
    """
    height, width = smart_resize(image.height, image.width, min_pixels=min_pixels, max_pixels=max_pixels)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)
