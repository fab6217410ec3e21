"""8-bit RGB from every pixel mode PIL opens, converted faithfully or refused with :class:`ImageError`.

Pixel modes, converted faithfully to 8-bit RGB (``round`` below means round half up) or refused:

* ``RGB``: kept. ``1``, ``L``, ``RGBX``, ``CMYK``, ``YCbCr``, ``HSV``: PIL's own conversion.
* ``LAB``: CIE L*a*b* (D50) to sRGB with LittleCMS (:mod:`PIL.ImageCms`); refused if it is not built in.
* Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with an RGBA palette, a transparent colour of ``P``,
  ``L``, ``RGB`` or 16-bit images) is composited on white; premultiplied ``RGBa`` / ``La`` are
  un-premultiplied first.
* 16-bit integer (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, any ``I;...``) and 32-bit integer ``I``:
  values in 0..65535 map to ``round(v * 255 / 65535)`` (so 65535 -> 255 and 257*k -> k: a 16-bit copy
  of an 8-bit picture loads identically). Pillow opens 16-bit PNG/TIFF as ``I;16`` or ``I``; an ``I``
  image holding 0..255 is scaled like any other (so it comes out dark). Values below 0 or above 65535
  are refused: they have no standard display mapping. (16-bit RGB/RGBA PNGs are different: Pillow
  decodes them to 8-bit ``RGB``/``RGBA`` itself, keeping each sample's high byte, ``v >> 8``, which is
  within 1 of the formula.)
* 32-bit float ``F`` (needs numpy): NaN or infinity is refused; if every value is in [0, 1] the value
  is ``round(v * 255)``; else if every value is in [0, 255], ``round(v)``; else if every value is in
  [0, 65535], ``round(v * 255 / 65535)``; else (negative or larger) refused.
* Any other mode is refused.
"""

from __future__ import annotations

import functools
from typing import cast

from PIL import Image

from grvl_sdk.errors import ImageError

__all__ = ["to_rgb"]

_WHITE = (255, 255, 255)
_PIL_CONVERTS = frozenset({"1", "L", "RGBX", "CMYK", "YCbCr", "HSV"})
_MAX_16BIT = 65535


@functools.lru_cache(maxsize=1)
def _lut_16bit() -> list[int]:
    """``round(v * 255 / 65535)`` for v in 0..65535, in integers (there are no ties to break)."""
    return [(v * 255 + _MAX_16BIT // 2) // _MAX_16BIT for v in range(_MAX_16BIT + 1)]


def _from_integer(image: Image.Image) -> Image.Image:
    """``I`` / ``I;16*`` -> RGB: 0..65535 scaled by 255/65535 and rounded; anything else refused.

    A transparent value (``info["transparency"]``, as 16-bit PNGs carry) is composited on white.
    """
    wide = image if image.mode == "I" else image.convert("I")
    low, high = cast("tuple[int, int]", wide.getextrema())
    if low < 0 or high > _MAX_16BIT:
        raise ImageError(
            f"integer image has values {low}..{high}, outside 0..{_MAX_16BIT}: no standard mapping to 8 bits"
        )
    gray = wide.point(_lut_16bit(), "L")
    key = image.info.get("transparency")
    if isinstance(key, int) and 0 <= key <= _MAX_16BIT:
        alpha = wide.point([0 if value == key else 255 for value in range(_MAX_16BIT + 1)], "L")
        return _on_white(Image.merge("LA", (gray, alpha)))
    return gray.convert("RGB")


def _from_float(image: Image.Image) -> Image.Image:
    """``F`` -> RGB by the range rule of the module docstring (exact round half up, in float64)."""
    try:
        import numpy as np
    except ImportError as exc:
        raise ImageError("32-bit float ('F') images need numpy to be converted; install numpy") from exc
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ImageError("float image has NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > _MAX_16BIT:
        raise ImageError(f"float image has values {low:g}..{high:g}, outside 0..{_MAX_16BIT}: no standard mapping")
    if high <= 1:
        values *= 255
    elif high > 255:
        values *= 255
        values /= _MAX_16BIT
    values += 0.5
    np.floor(values, out=values)
    np.clip(values, 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


def _from_lab(image: Image.Image) -> Image.Image:
    try:
        from PIL import ImageCms
    except ImportError as exc:
        raise ImageError("LAB images need Pillow built with LittleCMS (PIL.ImageCms), which is missing") from exc
    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return ImageCms.applyTransform(image, transform)  # type: ignore[return-value]


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, _WHITE)
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB by the rules of the module docstring, or :class:`ImageError`."""
    mode = image.mode
    if mode in ("RGB", "L") and "transparency" in image.info:  # a transparent colour (PNG tRNS)
        return _on_white(image)
    if mode == "RGB":
        return image
    if mode in _PIL_CONVERTS:
        return image.convert("RGB")
    if mode == "P":
        palette_mode = image.palette.mode if image.palette is not None else "RGB"
        if "transparency" in image.info or palette_mode == "RGBA":
            return _on_white(image)
        return image.convert("RGB")
    if mode in ("RGBA", "LA", "PA"):
        return _on_white(image)
    if mode in ("RGBa", "La"):  # premultiplied alpha: PIL un-premultiplies when converting
        return _on_white(image.convert("RGBA" if mode == "RGBa" else "LA"))
    if mode == "LAB":
        return _from_lab(image)
    if mode == "I" or mode.startswith("I;"):
        return _from_integer(image)
    if mode == "F":
        return _from_float(image)
    raise ImageError(f"unsupported image mode {mode!r}")
