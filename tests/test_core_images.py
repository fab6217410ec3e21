"""Image loading: every accepted source, EXIF orientation, RGB conversion, bombs, corrupt data, fuzzing."""

from __future__ import annotations

import base64
import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from grvl_sdk import ImageError, ImageTooLargeError
from grvl_sdk.images import encode_data_url, load_image, load_images


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def red() -> Image.Image:
    return Image.new("RGB", (40, 30), (255, 0, 0))


def test_every_source_kind_loads_the_same_pixels(tmp_path: Path, red):
    data = _png_bytes(red)
    path = tmp_path / "red.png"
    path.write_bytes(data)
    b64 = base64.b64encode(data).decode()
    sources = [red, data, bytearray(data), memoryview(data), path, str(path), b64, f"data:image/png;base64,{b64}"]
    for source in sources:
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (40, 30), type(source)
        assert image.getpixel((5, 5)) == (255, 0, 0)


def test_encode_data_url_round_trips(red):
    assert load_image(encode_data_url(red)).tobytes() == red.tobytes()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert load_image(buffer.getvalue()).size == (20, 60)


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert load_image(_png_bytes(image)).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (10, 10), 0)
    palette.info["transparency"] = 0
    assert load_image(palette).mode == "RGB"


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "I;16", "LA"])
def test_other_modes_become_rgb(mode):
    assert load_image(Image.new(mode, (8, 8))).mode == "RGB"


def test_max_pixels_shrinks_keeping_aspect():
    image = load_image(Image.new("RGB", (400, 200)), max_pixels=20_000)
    assert image.width * image.height <= 20_000
    assert abs(image.width / image.height - 2) < 0.05


def test_decompression_bomb_is_refused_before_decoding():
    bomb = Image.new("1", (9000, 9000))  # 81 M pixels, a few KB as PNG
    data = _png_bytes(bomb)
    assert len(data) < 100_000
    with pytest.raises(ImageTooLargeError) as info:
        load_image(data)
    assert info.value.code == "image_too_large"
    with pytest.raises(ImageTooLargeError):
        load_image(Image.new("RGB", (200, 200)), max_image_pixels=10_000)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (b"", "empty"),
        (b"not an image at all", "cannot read"),
        ("https://example.com/cat.png", "not fetched"),
        ("/no/such/file.png", "neither"),
        ("data:image/png,rawdata", "base64"),
        ("data:image/png;base64,@@@@", "base64"),
        (12345, "unsupported image type"),
        (Image.new("RGB", (1000, 2)), "aspect ratio"),
    ],
)
def test_bad_images_raise_image_error(source, fragment):
    with pytest.raises(ImageError) as info:
        load_image(source)
    assert fragment in str(info.value)


def test_truncated_file_is_an_image_error(red):
    data = _png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 2])


def test_load_images_orders_image_then_images(red):
    blue = Image.new("RGB", (4, 4), (0, 0, 255))
    loaded = load_images(red, [blue, blue])
    assert [im.getpixel((0, 0)) for im in loaded] == [(255, 0, 0), (0, 0, 255), (0, 0, 255)]
    with pytest.raises(ImageError):
        load_images(images=red)  # a single image given as images=
    assert load_images() == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fuzzed_bytes_only_raise_image_errors(data):
    try:
        image = load_image(data)
    except ImageError:
        return
    assert image.mode == "RGB"


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=8, max_size=200), st.integers(0, 200))
def test_fuzzed_corruption_of_a_real_png_only_raises_image_errors(noise, offset):
    data = bytearray(_png_bytes(Image.effect_noise((24, 24), 40).convert("RGB")))
    data[offset : offset + len(noise)] = noise
    with contextlib.suppress(ImageError):
        load_image(bytes(data))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_strings_only_raise_image_errors(text):
    with contextlib.suppress(ImageError):
        load_image(text)
