"""Pixel modes: every mode PIL can make becomes faithful 8-bit RGB, or an ImageError that says why.

The expected values are computed here with exact fractions from the rules of ``grvl_sdk.images``'s
docstring (round half up), independently of how the module computes them.
"""

from __future__ import annotations

import io
import math
import struct
import subprocess
import sys
import zlib
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from grvl_sdk import ImageError
from grvl_sdk.images import load_image

#: struct formats of one pixel of the modes whose values the tests decode themselves.
PIXEL_FORMATS = {"I;16": "<H", "I;16L": "<H", "I;16B": ">H", "I;16N": "=H", "I": "=i", "F": "=f"}
SIXTEEN_BIT = ["I;16", "I;16L", "I;16B", "I;16N"]


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _expected_integer(value: int) -> int:
    return _round_half_up(Fraction(value * 255, 65535))


def _expected_floats(values: list[float]) -> list[int] | None:
    """The documented F rule; ``None`` where the image must be refused."""
    if not all(math.isfinite(v) for v in values) or min(values) < 0 or max(values) > 65535:
        return None
    top = max(values)
    scale = Fraction(255) if top <= 1 else Fraction(1) if top <= 255 else Fraction(255, 65535)
    return [min(255, _round_half_up(Fraction(v) * scale)) for v in values]


def _image(mode: str, width: int, values: list[float]) -> Image.Image:
    """A ``mode`` image of ``width`` x ``len(values) / width`` pixels holding exactly ``values``."""
    data = b"".join(struct.pack(PIXEL_FORMATS[mode], v) for v in values)
    return Image.frombytes(mode, (width, len(values) // width), data)


def _encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def _grays(image: Image.Image) -> list[int]:
    assert image.mode == "RGB"
    pixels = list(image.get_flattened_data()) if hasattr(image, "get_flattened_data") else list(image.getdata())
    assert all(r == g == b for r, g, b in pixels), pixels
    return [r for r, _, _ in pixels]


# -- 16-bit and 32-bit integers ----------------------------------------------------------------------


def test_a_16_bit_png_is_scaled_not_clipped_to_white():
    data = _encoded(_image("I;16", 2, [1000, 60000]), "PNG")
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")  # what this Pillow makes of a 16-bit PNG
    loaded = load_image(data)
    assert loaded.getpixel((0, 0)) == (4, 4, 4)  # 1000 * 255 / 65535 = 3.89
    assert loaded.getpixel((1, 0)) == (233, 233, 233)  # 60000 * 255 / 65535 = 233.47
    assert loaded.tobytes() != Image.new("RGB", (2, 1), (255, 255, 255)).tobytes()


def test_two_different_16_bit_images_load_differently():
    dark = load_image(_encoded(_image("I;16", 2, [1000, 2000]), "PNG"))
    light = load_image(_encoded(_image("I;16", 2, [50000, 60000]), "PNG"))
    assert dark.tobytes() != light.tobytes()
    assert _grays(dark) == [4, 8] and _grays(light) == [195, 233]


def test_a_16_bit_copy_of_an_8_bit_picture_loads_identically():
    values = list(range(256))
    eight = Image.frombytes("L", (16, 16), bytes(values))
    sixteen = _image("I;16", 16, [v * 257 for v in values])
    from_eight, from_sixteen = load_image(_encoded(eight, "PNG")), load_image(_encoded(sixteen, "PNG"))
    assert from_sixteen.tobytes() == from_eight.tobytes()
    assert _grays(from_sixteen) == values


@pytest.mark.parametrize("mode", SIXTEEN_BIT)
def test_every_16_bit_byte_order_follows_the_formula(mode: str):
    values = [0, 128, 129, 257, 1000, 32767, 32768, 60000, 65534, 65535]
    assert _grays(load_image(_image(mode, 5, values))) == [0, 0, 1, 1, 4, 127, 128, 233, 255, 255]


def test_a_32_bit_integer_tiff_in_16_bit_range_is_scaled_like_16_bit():
    data = _encoded(_image("I", 5, [0, 257, 1000, 60000, 65535]), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert _grays(load_image(data)) == [0, 1, 4, 233, 255]


@pytest.mark.parametrize("values", [[-1, 5], [0, 65536], [0, 2**31 - 1], [-(2**31), 0]])
def test_a_32_bit_integer_tiff_out_of_16_bit_range_is_refused(values: list[int]):
    with pytest.raises(ImageError, match=r"outside 0\.\.65535"):
        load_image(_encoded(_image("I", 2, values), "TIFF"))


def test_a_transparent_16_bit_value_is_composited_on_white():
    image = _image("I;16", 3, [7, 30000, 65535])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=7)
    assert _grays(load_image(buffer.getvalue())) == [255, _expected_integer(30000), 255]


def _png_16_bit_rgb(row: list[tuple[int, ...]]) -> bytes:
    """A one-row 16-bit RGB (3 samples) or RGBA (4 samples) PNG, built by hand: PIL cannot write one."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    samples = len(row[0])
    header = struct.pack(">IIBBBBB", len(row), 1, 16, 6 if samples == 4 else 2, 0, 0, 0)
    raw = b"\0" + b"".join(struct.pack(f">{samples}H", *pixel) for pixel in row)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_a_16_bit_rgb_png_is_decoded_to_8_bits_by_pillow_not_flattened():
    row = [(1000, 60000, 65535), (257 * 7, 257 * 200, 128)]
    loaded = load_image(_png_16_bit_rgb(row))
    for x, pixel in enumerate(row):
        got = loaded.getpixel((x, 0))
        assert all(abs(g - _expected_integer(v)) <= 1 for g, v in zip(got, pixel, strict=True)), (got, pixel)
    assert loaded.getpixel((1, 0)) == (7, 200, 0)
    with_alpha = load_image(_png_16_bit_rgb([(1000, 60000, 65535, 0), (257 * 7, 257 * 200, 128, 65535)]))
    assert with_alpha.getpixel((0, 0)) == (255, 255, 255) and with_alpha.getpixel((1, 0)) == (7, 200, 0)


# -- floats --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # all in [0, 1]: x 255 (63.75 -> 64, 127.5 -> 128)
        ([0.0, 0.5, 2.0, 254.5, 255.0], [0, 1, 2, 255, 255]),  # all in [0, 255]: as is
        ([0.0, 128.5, 300.0, 65535.0], [0, 1, 1, 255]),  # all in [0, 65535]: x 255 / 65535 (128.5 -> 0.5)
    ],
)
def test_a_float_tiff_maps_by_its_value_range(values: list[float], expected: list[int]):
    pytest.importorskip("numpy")
    data = _encoded(_image("F", len(values), values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert _grays(load_image(data)) == expected == _expected_floats(values)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ([float("nan"), 1.0], "NaN"),
        ([float("inf"), 1.0], "infinite"),
        ([0.0, float("-inf")], "infinite"),
        ([-0.5, 1.0], "outside"),
        ([0.0, 65535.5], "outside"),
    ],
)
def test_a_float_tiff_without_a_display_mapping_is_refused(values: list[float], fragment: str):
    pytest.importorskip("numpy")
    with pytest.raises(ImageError, match=fragment):
        load_image(_encoded(_image("F", 2, values), "TIFF"))


def test_a_float_image_without_numpy_is_an_image_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(ImageError, match="numpy"):
        load_image(Image.new("F", (2, 2), 0.5))


def test_the_core_loads_16_bit_images_without_numpy():
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "from PIL import Image\n"
        "from grvl_sdk.images import load_image\n"
        "print(load_image(Image.new('I;16', (2, 2), 60000)).getpixel((0, 0)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(233, 233, 233)"


# -- the other modes -----------------------------------------------------------------------------


def test_premultiplied_alpha_is_unpremultiplied_then_composited_on_white():
    # (100, 50, 0) premultiplied by alpha 128/255 over white: c + 255 * (1 - a) = c + 127
    assert load_image(Image.new("RGBa", (1, 1), (100, 50, 0, 128))).getpixel((0, 0)) == (227, 177, 127)
    assert load_image(Image.new("La", (1, 1), (100, 128))).getpixel((0, 0)) == (227, 227, 227)
    assert load_image(Image.new("RGBa", (1, 1), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_lab_is_converted_as_a_colour_space_not_band_by_band():
    pytest.importorskip("PIL.ImageCms")
    white = load_image(Image.new("LAB", (1, 1), (255, 128, 128))).getpixel((0, 0))
    black = load_image(Image.new("LAB", (1, 1), (0, 128, 128))).getpixel((0, 0))
    gray = load_image(Image.new("LAB", (1, 1), (128, 128, 128))).getpixel((0, 0))
    red = load_image(Image.new("LAB", (1, 1), (136, 208, 195))).getpixel((0, 0))  # L* 53, a* 80, b* 67
    assert min(white) >= 250 and max(black) <= 3
    assert max(gray) - min(gray) <= 2 and 110 <= gray[0] <= 130  # L* 50 is sRGB ~119
    assert red[0] >= 240 and max(red[1:]) <= 30


def test_hsv_and_ycbcr_are_converted_as_colour_spaces():
    assert load_image(Image.new("HSV", (1, 1), (0, 255, 255))).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(Image.new("HSV", (1, 1), (85, 255, 255))).getpixel((0, 0)) == (0, 255, 0)
    assert load_image(Image.new("YCbCr", (1, 1), (255, 128, 128))).getpixel((0, 0)) == (255, 255, 255)


def test_a_transparent_colour_key_becomes_white():
    rgb = Image.new("RGB", (2, 1), (10, 20, 30))
    rgb.putpixel((1, 0), (1, 2, 3))
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", transparency=(10, 20, 30))
    loaded = load_image(buffer.getvalue())
    assert loaded.getpixel((0, 0)) == (255, 255, 255) and loaded.getpixel((1, 0)) == (1, 2, 3)
    gray = Image.new("L", (2, 1), 7)
    gray.putpixel((1, 0), 9)
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG", transparency=7)
    assert _grays(load_image(buffer.getvalue())) == [255, 9]


def test_a_palette_with_alpha_is_composited_on_white():
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 0, 200, 100, 50, 255], "RGBA")
    image.putpixel((1, 0), 1)
    loaded = load_image(image)
    assert loaded.getpixel((0, 0)) == (255, 255, 255) and loaded.getpixel((1, 0)) == (200, 100, 50)


def test_an_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch):
    image = Image.new("L", (2, 2))
    monkeypatch.setattr(Image.Image, "mode", property(lambda self: "BGR;15"))
    with pytest.raises(ImageError, match="unsupported image mode 'BGR;15'"):
        load_image(image)


# -- every mode, random pixels -------------------------------------------------------------------


@st.composite
def _random_images(draw: st.DrawFn) -> tuple[str, Image.Image, bytes]:
    mode = draw(st.sampled_from(sorted(Image.MODES)))
    size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    data = draw(st.binary(min_size=len(Image.new(mode, size).tobytes()), max_size=len(Image.new(mode, size).tobytes())))
    return mode, Image.frombytes(mode, size, data), data


@settings(max_examples=200, deadline=None)
@given(_random_images())
def test_every_mode_loads_as_rgb_of_the_same_size_or_is_an_image_error(case: tuple[str, Image.Image, bytes]):
    mode, image, data = case
    try:
        loaded = load_image(image)
    except ImageError:
        assert mode in ("I", "F"), f"{mode} images of any pixels should load"
        return
    assert loaded.mode == "RGB" and loaded.size == image.size
    if mode in PIXEL_FORMATS:
        values = [v for (v,) in struct.iter_unpack(PIXEL_FORMATS[mode], data)]
        expected = _expected_floats(values) if mode == "F" else [_expected_integer(v) for v in values]
        assert _grays(loaded) == expected


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([*SIXTEEN_BIT, "I"]), st.integers(1, 5), st.integers(1, 4), st.data())
def test_integer_pixels_follow_the_16_bit_formula(mode: str, width: int, height: int, data: st.DataObject):
    wide = st.integers(0, 65535) if mode != "I" else st.integers(0, 65535) | st.integers(-(2**31), 2**31 - 1)
    values = data.draw(st.lists(wide, min_size=width * height, max_size=width * height))
    image = _image(mode, width, values)
    if min(values) < 0 or max(values) > 65535:
        with pytest.raises(ImageError, match="outside"):
            load_image(image)
        return
    assert _grays(load_image(image)) == [_expected_integer(v) for v in values]


_FLOAT32 = {"width": 32, "allow_nan": False, "allow_infinity": False}
_FLOAT_RANGES = [
    st.floats(0, 1, **_FLOAT32),
    st.floats(0, 255, **_FLOAT32),
    st.floats(0, 65535, **_FLOAT32),
    st.floats(-2, 70000, **_FLOAT32),
    st.floats(width=32),  # NaN and infinities too
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_FLOAT_RANGES), st.integers(1, 5), st.integers(1, 4), st.data())
def test_float_pixels_follow_the_range_rule(floats, width: int, height: int, data: st.DataObject):
    pytest.importorskip("numpy")
    values = data.draw(st.lists(floats, min_size=width * height, max_size=width * height))
    expected = _expected_floats(values)
    image = _image("F", width, values)
    if expected is None:
        with pytest.raises(ImageError):
            load_image(image)
        return
    assert _grays(load_image(image)) == expected
