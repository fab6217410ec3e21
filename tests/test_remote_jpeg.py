"""The remote backend's image encoding: PNG by default (pixel-exact), JPEG at a configurable quality."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from grvl_sdk import InputError
from grvl_sdk.backends._wire import data_url
from grvl_sdk.backends.remote import RemoteBackend


def _decoded(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_jpeg_quality_is_used_and_png_stays_lossless():
    image = Image.effect_noise((224, 168), 60).convert("RGB")
    low, high = data_url(image, "JPEG", 30), data_url(image, "JPEG", 95)
    assert low.startswith("data:image/jpeg;base64,") and len(low) < len(high)
    png = data_url(image, "PNG")
    assert _decoded(png).tobytes() == image.tobytes()


def test_jpeg_quality_is_validated_and_part_of_the_cache_settings():
    for bad in (0, 101, 1.5, True):
        with pytest.raises(InputError):
            RemoteBackend("http://127.0.0.1:9", model="m", image_format="JPEG", jpeg_quality=bad)
    a = RemoteBackend("http://127.0.0.1:9", model="m", image_format="JPEG", jpeg_quality=80)
    b = RemoteBackend("http://127.0.0.1:9", model="m", image_format="JPEG", jpeg_quality=90)
    png = RemoteBackend("http://127.0.0.1:9", model="m")
    try:
        assert a.cache_settings != b.cache_settings and png.cache_settings.endswith(":PNG")
    finally:
        for backend in (a, b, png):
            backend.close()
