"""Image loading: every accepted source, EXIF orientation, RGB conversion, bombs, corrupt data, fuzzing."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from grvl_sdk import ImageError, ImageTooLargeError
from grvl_sdk.errors import InputError
from grvl_sdk.images import encode_data_url, load_image, load_images, resize_to_grid, smart_resize


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
        ("/no/such/file.png", "image file not found: /no/such/file.png"),
        ("no-such-file.jpg", "image file not found: no-such-file.jpg"),
        ("what is this?", "neither"),
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


# -- paths that are not regular files --------------------------------------------------------------


def _outcome_within(seconds: float, call: Callable[[], Any]) -> BaseException | Any:
    """Run ``call`` in a daemon thread; fail (instead of hanging the suite) if it takes over ``seconds``."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("as_str", [False, True])
def test_a_fifo_is_refused_at_once_not_opened(tmp_path: Path, as_str: bool):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    try:
        outcome = _outcome_within(10.0, lambda: load_image(str(fifo) if as_str else fifo))
    finally:  # a regression blocks in open() on the reader side: a writer lets it go
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert isinstance(outcome, ImageError), outcome
    assert "not a regular file" in str(outcome) and str(fifo) in str(outcome)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
@pytest.mark.parametrize("as_str", [False, True])
def test_a_device_is_refused_at_once_not_read(device: str, as_str: bool):
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    outcome = _outcome_within(10.0, lambda: load_image(device if as_str else Path(device)))
    assert isinstance(outcome, ImageError), outcome
    assert "not a regular file" in str(outcome)


@pytest.mark.parametrize("as_str", [False, True])
def test_a_directory_is_refused_as_not_a_regular_file(tmp_path: Path, as_str: bool):
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(str(tmp_path) if as_str else tmp_path)


@pytest.mark.parametrize("source", [Path("/nope.png"), "/nope.png", "nope.png", "/nope/AAAA-not base64", "C:\\x.jpg"])
def test_a_missing_file_says_not_found(source):
    with pytest.raises(ImageError) as info:
        load_image(source)
    assert str(info.value).startswith(f"image file not found: {source}")
    assert "neither" not in str(info.value)


def test_a_path_like_string_that_decodes_as_base64_but_is_no_image_says_not_found():
    with pytest.raises(ImageError) as info:
        load_image("/data/pictures/cat")  # valid base64 characters, decodes to garbage
    assert str(info.value).startswith("image file not found: /data/pictures/cat")


def test_a_regular_file_given_as_str_and_path_is_read(tmp_path: Path, red):
    path = tmp_path / "red image.png"
    path.write_bytes(_png_bytes(red))
    assert load_image(path).getpixel((0, 0)) == load_image(str(path)).getpixel((0, 0)) == (255, 0, 0)


def test_an_unreadable_file_is_an_image_error(tmp_path: Path, red):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = tmp_path / "locked.png"
    path.write_bytes(_png_bytes(red))
    path.chmod(0)
    with pytest.raises(ImageError, match="cannot open image file"):
        load_image(path)


def test_a_multi_frame_file_loads_its_first_frame(tmp_path: Path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "two.tiff"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_image(path).getpixel((0, 0)) == (255, 0, 0)


# -- the resize rule (Qwen2.5-VL's smart_resize) -------------------------------------------------

PIXEL_BUDGETS = [
    (4 * 28 * 28, 768 * 768),
    (4 * 28 * 28, 1280 * 28 * 28),
    (262144, 4194304),
    (4 * 28 * 28, 16384 * 28 * 28),
]
SIZES = [(1, 1), (10, 1990), (1990, 10), (256, 256), (1024, 768), (768, 1024), (2000, 1000), (4032, 3024)]
SIZES += [(3024, 4032), (28, 28), (27, 29), (29, 27), (14, 14), (42, 42), (5000, 25), (1, 200), (200, 1)]


def _reference_smart_resize() -> Callable[..., tuple[int, int]]:
    """transformers' own rule (the torchvision module needs torchvision; the PIL one is a verbatim copy)."""
    pytest.importorskip("transformers")
    try:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference
    except ImportError:
        try:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference
        except ImportError:
            pytest.skip("this transformers has no Qwen2-VL smart_resize")
    return reference


def _both(reference: Callable[..., tuple[int, int]], height: int, width: int, low: int, high: int) -> None:
    try:
        expected = reference(height, width, factor=28, min_pixels=low, max_pixels=high)
    except ValueError:
        with pytest.raises(ImageError, match="aspect ratio"):
            smart_resize(height, width, min_pixels=low, max_pixels=high)
        return
    assert smart_resize(height, width, min_pixels=low, max_pixels=high) == expected, (height, width, low, high)


@pytest.mark.parametrize(("low", "high"), PIXEL_BUDGETS)
def test_smart_resize_equals_transformers_on_known_sizes(low: int, high: int):
    reference = _reference_smart_resize()
    for height, width in SIZES:
        _both(reference, height, width, low, high)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from(PIXEL_BUDGETS))
def test_smart_resize_equals_transformers_everywhere(height: int, width: int, budget: tuple[int, int]):
    _both(_reference_smart_resize(), height, width, *budget)


def test_smart_resize_vision_tokens_of_a_1024x768_photo():
    # h * w / 784 vision tokens: 27 x 37 patches of 28 px unshrunk, 23 x 31 under the 768*768 cap
    assert smart_resize(768, 1024, min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28) == (756, 1036)
    assert 756 * 1036 // 784 == 999
    assert smart_resize(768, 1024, min_pixels=4 * 28 * 28, max_pixels=768 * 768) == (644, 868)
    assert 644 * 868 // 784 == 713
    assert smart_resize(1, 1, min_pixels=4 * 28 * 28, max_pixels=768 * 768) == (56, 56)


@pytest.mark.parametrize(
    ("height", "width", "settings_", "error"),
    [
        (10, 2010, {}, ImageError),
        (0, 10, {}, ImageError),
        (10, -1, {}, ImageError),
        (10, 10, {"factor": 0}, InputError),
        (10, 10, {"max_pixels": 0}, InputError),
    ],
)
def test_smart_resize_refuses_bad_input(height, width, settings_, error):
    options = {"min_pixels": 3136, "max_pixels": 589824, **settings_}
    with pytest.raises(error):
        smart_resize(height, width, **options)


def test_resize_to_grid_keeps_an_image_already_on_the_grid():
    image = Image.new("RGB", (644, 868))
    assert resize_to_grid(image, min_pixels=3136, max_pixels=768 * 768) is image


def test_resize_to_grid_resizes_bicubic_to_the_smart_size():
    image = Image.effect_noise((1024, 768), 60).convert("RGB")
    resized = resize_to_grid(image, min_pixels=3136, max_pixels=768 * 768)
    assert resized.size == (868, 644)
    assert resized.tobytes() == image.resize((868, 644), Image.Resampling.BICUBIC).tobytes()


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 900), st.integers(1, 900), st.sampled_from(PIXEL_BUDGETS))
def test_resize_to_grid_lands_on_a_fixed_point_of_the_rule(width: int, height: int, budget: tuple[int, int]):
    if max(width, height) / min(width, height) > 200:
        return
    low, high = budget
    resized = resize_to_grid(Image.new("RGB", (width, height), (9, 99, 199)), min_pixels=low, max_pixels=high)
    assert resized.width % 28 == 0 and resized.height % 28 == 0
    grid = (resized.height, resized.width)
    assert smart_resize(*grid, min_pixels=low, max_pixels=high) == grid
    assert resize_to_grid(resized, min_pixels=low, max_pixels=high) is resized
