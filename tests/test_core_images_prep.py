"""Images are prepared at the size the model sees: one decode (reduced for JPEG), one resize."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageFile

from grvl_sdk.images import load_image, load_images, resize_to_grid, smart_resize

GRID = (3136, 1_003_520)  # the guard's default pixel bounds shape: min, max


def _photo(width: int, height: int, fmt: str, **save: object) -> bytes:
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.fixture
def spy(monkeypatch):
    """Records the size of every decode (``ImageFile.load``) and every resize (from -> to)."""
    decodes: list[tuple[int, int]] = []
    resizes: list[tuple[tuple[int, int], tuple[int, int]]] = []
    load, resize = ImageFile.ImageFile.load, Image.Image.resize

    def spy_load(self, *args, **kwargs):
        decoding = bool(self.tile)  # load() of an already-decoded image decodes nothing
        out = load(self, *args, **kwargs)
        if decoding:
            decodes.append(self.size)
        return out

    def spy_resize(self, size, *args, **kwargs):
        resizes.append((self.size, tuple(size)))
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    monkeypatch.setattr(Image.Image, "resize", spy_resize)
    return decodes, resizes


def _grid_size(width: int, height: int) -> tuple[int, int]:
    h, w = smart_resize(height, width, min_pixels=GRID[0], max_pixels=GRID[1])
    return w, h


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_is_never_decoded_at_full_size(spy, orientation):
    decodes, resizes = spy
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: rotated 90 degrees, width and height swap
    data = _photo(2400, 1800, "JPEG", quality=90, exif=exif.tobytes())
    decodes.clear(), resizes.clear()
    [image] = load_images(data, grid=GRID)
    expected = _grid_size(2400, 1800) if orientation == 1 else _grid_size(1800, 2400)
    assert image.size == expected  # the grid size of the full image, whatever the decode scale
    assert decodes and all(w * h < 2400 * 1800 for w, h in decodes), decodes  # DCT-scaled decode only
    assert len(resizes) == 1  # one resize, from the reduced decode to the grid
    # the pixels stay close to a full decode + one resize (what the processor would do)
    reference = resize_to_grid(load_image(data), min_pixels=GRID[0], max_pixels=GRID[1])
    assert reference.size == image.size
    diff = sum(abs(a - b) for a, b in zip(image.tobytes(), reference.tobytes(), strict=True)) / len(image.tobytes())
    assert diff < 3.0


def test_other_formats_hold_one_full_size_decode_and_one_resize(spy):
    decodes, resizes = spy
    data = _photo(1600, 1200, "PNG")
    decodes.clear(), resizes.clear()
    [image] = load_images(data, grid=GRID)
    assert image.size == _grid_size(1600, 1200)
    assert decodes.count((1600, 1200)) == 1 and len(resizes) == 1


def test_a_small_jpeg_is_decoded_whole_and_not_resized_twice(spy):
    decodes, resizes = spy
    data = _photo(560, 420, "JPEG")
    decodes.clear(), resizes.clear()
    [image] = load_images(data, grid=GRID)
    assert decodes == [(560, 420)] and image.size == (560, 420) and resizes == []


def test_the_guard_prepares_each_image_once(tiny_guard, spy):
    decodes, resizes = spy
    bounds = tiny_guard.backend.image_bounds
    h, w = smart_resize(1500, 2000, min_pixels=bounds[0], max_pixels=bounds[1])
    width, height = 2 * w + 56, 2 * h + 42  # at least twice the target: a half-scale decode covers it
    data = _photo(width, height, "JPEG")
    decodes.clear(), resizes.clear()
    item = tiny_guard.prepare("what is this?", image=data)
    h, w = smart_resize(height, width, min_pixels=bounds[0], max_pixels=bounds[1])
    assert item.images[0].size == (w, h) and len(resizes) == 1
    assert decodes and all(dw * dh < width * height for dw, dh in decodes), decodes
