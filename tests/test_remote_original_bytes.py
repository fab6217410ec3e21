"""The remote backend sends an image's original bytes when they already fit the grid and decode to exactly
the pixels the guard loaded; every other image is resized and re-encoded. Either way the server decodes
the pixels a local guard sees (the remote grid's "identical pixel_values" guarantee)."""

from __future__ import annotations

import base64
import gc
import io
import json

import httpx
import pytest
from PIL import Image

from grvl_sdk import Guard, ImageError, InputError
from grvl_sdk.backends.remote import RemoteBackend
from grvl_sdk.images import load_images, original_bytes, resize_to_grid, smart_resize
from grvl_sdk.testing import guard_output
from grvl_sdk.types import GuardInput

GRID = (4 * 28 * 28, 1280 * 28 * 28)
ON_GRID = (112, 84)  # multiples of 28 within the bounds: smart_resize keeps the size
OFF_GRID = (120, 90)  # rounds to 112x84: resized on the client


def _photo(size: tuple[int, int]) -> Image.Image:
    noise = Image.effect_noise(size, 40)
    return Image.merge("RGB", (noise, noise.rotate(90, expand=False), Image.linear_gradient("L").resize(size)))


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _url_bytes(url: str) -> tuple[str, bytes]:
    head, payload = url.split(",", 1)
    return head, base64.b64decode(payload)


def _served(data: bytes) -> Image.Image:
    """What vLLM / SGLang make of an image URL's bytes: PIL open, convert to RGB."""
    return Image.open(io.BytesIO(data)).convert("RGB")


@pytest.fixture
def backend():
    remote = RemoteBackend("http://127.0.0.1:9/v1", model="m", min_pixels=GRID[0], max_pixels=GRID[1])
    yield remote
    remote.close()


@pytest.mark.parametrize(
    ("fmt", "mime", "params"),
    [
        ("JPEG", "image/jpeg", {"quality": 90}),
        ("PNG", "image/png", {}),
        ("WEBP", "image/webp", {"quality": 80}),
        ("WEBP", "image/webp", {"lossless": True}),
    ],
)
def test_original_bytes_are_sent_byte_identical_when_they_fit(backend, tmp_path, fmt, mime, params):
    assert smart_resize(ON_GRID[1], ON_GRID[0], min_pixels=GRID[0], max_pixels=GRID[1]) == ON_GRID[::-1]
    data = _encoded(_photo(ON_GRID), fmt, **params)
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(data)
    data_url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    for source in (data, bytearray(data), str(path), path, data_url, base64.b64encode(data).decode()):
        (image,) = load_images(source, grid=GRID)
        assert original_bytes(image) is not None, (fmt, type(source))
        head, sent = _url_bytes(backend.image_url(image))
        assert head == f"data:{mime};base64", (fmt, type(source))
        assert sent == data, (fmt, type(source))
        # the server decodes exactly the pixels the guard loaded (and hashed for its cache)
        assert _served(sent).tobytes() == image.tobytes(), (fmt, type(source))


def test_a_grayscale_jpeg_original_decodes_to_the_loaded_pixels(backend):
    gray = _encoded(_photo(ON_GRID).convert("L"), "JPEG", quality=85)
    (image,) = load_images(gray, grid=GRID)
    assert image.mode == "RGB" and original_bytes(image) is not None
    assert _served(_url_bytes(backend.image_url(image))[1]).tobytes() == image.tobytes()


@pytest.mark.parametrize(("fmt", "params"), [("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"lossless": True})])
def test_an_image_off_the_grid_is_resized_and_re_encoded(backend, fmt, params):
    data = _encoded(_photo(OFF_GRID), fmt, **params)
    (image,) = load_images(data, grid=GRID)
    assert image.size == ON_GRID  # resized while loading: the bytes no longer describe it
    assert original_bytes(image) is None
    head, sent = _url_bytes(backend.image_url(image))
    assert head == "data:image/png;base64" and sent != data
    assert _served(sent).tobytes() == image.tobytes()


def test_a_large_photo_is_decoded_reduced_and_re_encoded(backend):
    data = _encoded(_photo((2016, 1512)), "JPEG", quality=90)
    (image,) = load_images(data, grid=GRID)
    assert original_bytes(image) is None
    head, sent = _url_bytes(backend.image_url(image))
    assert head == "data:image/png;base64" and _served(sent).tobytes() == image.tobytes()


def test_an_exif_rotated_image_is_re_encoded_upright(backend):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = _encoded(_photo(ON_GRID[::-1]), "JPEG", quality=90, exif=exif.tobytes())
    (image,) = load_images(data, grid=GRID)
    assert image.size == ON_GRID and original_bytes(image) is None
    head, sent = _url_bytes(backend.image_url(image))
    assert head == "data:image/png;base64" and _served(sent).tobytes() == image.tobytes()
    for orientation in (2, 3, 4):  # mirrored or upside down: same size, other pixels
        exif[0x0112] = orientation
        (turned,) = load_images(_encoded(_photo(ON_GRID), "JPEG", quality=90, exif=exif.tobytes()), grid=GRID)
        assert turned.size == ON_GRID and original_bytes(turned) is None, orientation
        assert _served(_url_bytes(backend.image_url(turned))[1]).tobytes() == turned.tobytes(), orientation
    upright = _encoded(_photo(ON_GRID), "JPEG", quality=90, exif=Image.Exif().tobytes())
    (plain,) = load_images(upright, grid=GRID)  # orientation 1 (or none): sent as it is
    assert _url_bytes(backend.image_url(plain))[1] == upright


def _variants() -> dict[str, bytes]:
    photo = _photo(ON_GRID)
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    transparent = photo.copy()
    frames = [photo, photo.rotate(180)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    animated_webp = io.BytesIO()
    frames[0].save(animated_webp, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    return {
        "RGBA PNG": _encoded(rgba, "PNG"),
        "palette PNG": _encoded(photo.convert("P"), "PNG"),
        "PNG with a transparent colour": _encoded(transparent, "PNG", transparency=(0, 0, 0)),
        "16-bit grayscale PNG": _encoded(photo.convert("L").convert("I;16"), "PNG"),
        "CMYK JPEG": _encoded(photo.convert("CMYK"), "JPEG"),
        "animated PNG": buffer.getvalue(),
        "animated WebP": animated_webp.getvalue(),
        "GIF": _encoded(photo.convert("P"), "GIF"),
        "BMP": _encoded(photo, "BMP"),
        "TIFF": _encoded(photo, "TIFF"),
        "PNG larger than its pixels": _encoded(photo, "PNG", pnginfo=_big_text()),
    }


def _big_text():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("comment", "x" * (4 * ON_GRID[0] * ON_GRID[1]))
    return info


@pytest.mark.parametrize("name", sorted(_variants()))
def test_images_the_server_would_read_differently_are_re_encoded(backend, name):
    data = _variants()[name]
    loaded = load_images(data, grid=GRID)
    for image in loaded:
        assert original_bytes(image) is None, name
        head, sent = _url_bytes(backend.image_url(image))
        assert head == "data:image/png;base64", name
        assert _served(sent).tobytes() == image.tobytes(), name


def test_a_pil_image_and_images_derived_from_a_loaded_one_are_re_encoded(backend):
    data = _encoded(_photo(ON_GRID), "PNG")
    (image,) = load_images(data, grid=GRID)
    assert _url_bytes(backend.image_url(image))[1] == data
    for derived in (image.copy(), image.rotate(180), image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                    image.convert("RGB"), *load_images(image, grid=GRID)):  # fmt: skip
        if derived is image:
            continue
        assert original_bytes(derived) is None
        head, sent = _url_bytes(backend.image_url(derived))
        assert head == "data:image/png;base64" and _served(sent).tobytes() == derived.tobytes()


def test_the_entry_goes_with_its_image():
    from grvl_sdk import images

    gc.collect()
    before = len(images._ORIGINALS)
    loaded = load_images(images=[_encoded(_photo(ON_GRID), "PNG") for _ in range(3)], grid=GRID)
    assert len(images._ORIGINALS) == before + 3
    del loaded
    gc.collect()
    assert len(images._ORIGINALS) == before


def test_without_a_grid_originals_of_any_size_are_sent_as_they_are():
    data = _encoded(_photo(OFF_GRID), "JPEG", quality=90)
    remote = RemoteBackend("http://127.0.0.1:9/v1", model="m", max_pixels=None)
    try:
        (image,) = load_images(data, grid=remote.image_bounds)
        assert _url_bytes(remote.image_url(image))[1] == data
    finally:
        remote.close()


def test_send_original_bytes_off_always_re_encodes_and_is_validated():
    data = _encoded(_photo(ON_GRID), "JPEG", quality=90)
    off = RemoteBackend("http://127.0.0.1:9/v1", model="m", send_original_bytes=False)
    try:
        (image,) = load_images(data, grid=off.image_bounds)
        assert original_bytes(image) is not None
        assert off.image_url(image).startswith("data:image/png;base64,")
    finally:
        off.close()
    with pytest.raises(InputError, match="send_original_bytes"):
        RemoteBackend("http://127.0.0.1:9/v1", model="m", send_original_bytes="yes")


def test_with_jpeg_re_encoding_the_cache_settings_say_whether_originals_are_sent():
    on = RemoteBackend("http://127.0.0.1:9/v1", model="m", image_format="JPEG")
    off = RemoteBackend("http://127.0.0.1:9/v1", model="m", image_format="JPEG", send_original_bytes=False)
    png_on = RemoteBackend("http://127.0.0.1:9/v1", model="m")
    png_off = RemoteBackend("http://127.0.0.1:9/v1", model="m", send_original_bytes=False)
    try:
        assert on.cache_settings != off.cache_settings
        assert png_on.cache_settings == png_off.cache_settings  # both pixel-exact: same judgement
    finally:
        for remote in (on, off, png_on, png_off):
            remote.close()


def test_a_check_through_the_guard_sends_the_original_bytes():
    bodies: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        body = {"choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": guard_output("unharmful")}}]}  # fmt: skip
        return httpx.Response(200, json=body)

    fits = _encoded(_photo(ON_GRID), "JPEG", quality=90)
    large = _encoded(_photo(OFF_GRID), "JPEG", quality=90)
    guard = Guard.from_server("http://guard.test/v1", model="m", transport=httpx.MockTransport(answer))
    try:
        assert not guard.check("what is this?", images=[fits, large]).failed
    finally:
        guard.close()
    urls = [part["image_url"]["url"] for part in bodies[0]["messages"][1]["content"] if part["type"] == "image_url"]
    assert _url_bytes(urls[0]) == ("data:image/jpeg;base64", fits)
    assert urls[1].startswith("data:image/png;base64,")


def test_original_bytes_keep_the_remote_grids_identical_pixel_values(tiny_guard):
    """The local encoder and the server's processor (with the server's own, larger bounds) give the same
    ``pixel_values`` for an image sent as its original bytes."""
    backend = tiny_guard.backend
    encoder = backend.encoder
    remote = RemoteBackend(
        "http://127.0.0.1:9/v1", model="m", min_pixels=encoder.min_pixels, max_pixels=encoder.max_pixels
    )
    try:
        for fmt, params in (("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"quality": 80})):
            data = _encoded(_photo(ON_GRID), fmt, **params)
            item = GuardInput(text="x", images=tuple(load_images(data, grid=remote.image_bounds)))
            url = remote.payload(item, 8)["messages"][1]["content"][1]["image_url"]["url"]
            assert _url_bytes(url)[1] == data, fmt
            local = encoder.encode_batch([item], device="cpu", pixel_dtype=backend._pixel_dtype())
            served = encoder.image_processor(
                images=[_served(_url_bytes(url)[1])],
                size={"shortest_edge": 56 * 56, "longest_edge": 16384 * 28 * 28},
                return_tensors="pt",
            )
            assert served["image_grid_thw"].tolist() == local.image_grid_thw.tolist(), fmt
            assert (served["pixel_values"] == local.pixel_values).all(), fmt
    finally:
        remote.close()


# -- regressions: the bytes sent are the bytes decoded, whatever happens around the load ------------------


@pytest.mark.parametrize("grid", [GRID, None])
def test_a_file_rewritten_while_it_loads_sends_the_bytes_that_were_decoded(backend, tmp_path, monkeypatch, grid):
    """The file is read once and decoded from those bytes: rewritten in place (same inode, same length)
    right after the decode, it cannot make the bytes sent differ from the pixels loaded and hashed."""
    from grvl_sdk import images

    first, second = _encoded(_photo(ON_GRID), "PNG"), _encoded(_photo(ON_GRID).rotate(180), "PNG")
    length = max(len(first), len(second))
    first, second = first.ljust(length, b"\0"), second.ljust(length, b"\0")  # bytes after IEND are ignored
    path = tmp_path / "upload.png"
    path.write_bytes(first)
    decode = images._open

    def decode_then_rewrite(*args, **kwargs):
        image = decode(*args, **kwargs)
        with open(path, "r+b") as file:  # in place: an open descriptor sees the new content
            file.write(second)
        return image

    monkeypatch.setattr(images, "_open", decode_then_rewrite)
    (image,) = load_images(str(path), grid=grid)
    assert image.tobytes() == _served(first).tobytes()  # what was decoded, hashed and judged locally
    assert original_bytes(image) is not None and original_bytes(image).data == first
    assert _served(_url_bytes(backend.image_url(image))[1]).tobytes() == image.tobytes()


def test_truncated_images_pillow_was_told_to_accept_are_re_encoded(backend, monkeypatch):
    """With ``ImageFile.LOAD_TRUNCATED_IMAGES`` a cut-off file loads here (grey-filled) but not on a server
    without that setting: its bytes are never sent, its pixels are."""
    from PIL import ImageFile

    whole = _encoded(_photo(ON_GRID), "JPEG", quality=90)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for data in (whole[: len(whole) * 2 // 3], whole):
        (image,) = load_images(data, grid=GRID)
        assert original_bytes(image) is None
        head, sent = _url_bytes(backend.image_url(image))
        assert head == "data:image/png;base64"
        with monkeypatch.context() as server:  # the server's Pillow, default settings
            server.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
            assert _served(sent).tobytes() == image.tobytes()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    with pytest.raises(ImageError, match="truncated"):
        load_images(whole[: len(whole) * 2 // 3], grid=GRID)


def _edits():
    from PIL import ImageDraw

    return {
        "ImageDraw": lambda image: ImageDraw.Draw(image).rectangle((0, 0, 40, 30), fill=(0, 0, 0)),
        "paste": lambda image: image.paste((255, 255, 255), (10, 10, 50, 50)),
        "putpixel": lambda image: image.putpixel((0, 0), (1, 2, 3)),
        "putdata": lambda image: image.putdata([(7, 7, 7)] * (image.width * image.height)),
        "thumbnail": lambda image: image.thumbnail((56, 56)),
    }


@pytest.mark.parametrize("edit", sorted(_edits()))
def test_an_image_edited_in_place_after_loading_sends_its_edited_pixels(backend, edit):
    data = _encoded(_photo(ON_GRID), "PNG")
    (image,) = load_images(data, grid=GRID)
    assert original_bytes(image) is not None
    _edits()[edit](image)
    assert image.tobytes() != _served(data).tobytes()
    assert original_bytes(image) is None, edit
    head, sent = _url_bytes(backend.image_url(image))
    on_grid = resize_to_grid(image, min_pixels=GRID[0], max_pixels=GRID[1])  # thumbnail leaves the grid
    assert head == "data:image/png;base64" and _served(sent).tobytes() == on_grid.tobytes(), edit


def test_pixel_access_writes_to_an_image_keeping_its_bytes_fail_loudly():
    (image,) = load_images(_encoded(_photo(ON_GRID), "PNG"), grid=GRID)
    with pytest.raises(ValueError, match="readonly"):
        image.load()[0, 0] = (1, 2, 3)
    copy = image.copy()  # the way to edit pixel by pixel: a copy, which keeps no bytes
    copy.load()[0, 0] = (1, 2, 3)
    assert copy.getpixel((0, 0)) == (1, 2, 3) and original_bytes(copy) is None
    assert original_bytes(image) is not None  # reading is unaffected


def test_a_prepared_input_edited_before_check_input_sends_what_the_cache_hashed():
    from PIL import ImageDraw

    from grvl_sdk.cache import content_hashes

    bodies: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        body = {"choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": guard_output("unharmful")}}]}  # fmt: skip
        return httpx.Response(200, json=body)

    data = _encoded(_photo(ON_GRID), "JPEG", quality=90)
    guard = Guard.from_server("http://guard.test/v1", model="m", transport=httpx.MockTransport(answer))
    try:
        item = guard.prepare("what is this?", image=data)
        ImageDraw.Draw(item.images[0]).rectangle((0, 0, 60, 40), fill=(255, 0, 0))  # e.g. a redaction
        assert not guard.check_input(item).failed
    finally:
        guard.close()
    (url,) = [part["image_url"]["url"] for part in bodies[0]["messages"][1]["content"] if part["type"] == "image_url"]
    head, sent = _url_bytes(url)
    assert head == "data:image/png;base64"
    served = GuardInput(text="x", images=(_served(sent),))
    assert content_hashes(served).images == content_hashes(item).images  # the pixels keyed are the pixels judged


def test_entries_follow_their_images_across_threads_and_id_reuse():
    """Many loads on several threads, images dropped at once (ids reused): every image that keeps bytes
    keeps its own, and no entry outlives its image."""
    from concurrent.futures import ThreadPoolExecutor

    from grvl_sdk import images

    sources = [_encoded(Image.new("RGB", ON_GRID, (i, 255 - i, 7)), "PNG") for i in range(16)]

    def load(index: int) -> bool:
        (image,) = load_images(sources[index % 16], grid=GRID)
        kept = original_bytes(image)
        return kept is not None and kept.data == sources[index % 16] and image.getpixel((0, 0))[0] == index % 16

    gc.collect()
    before = len(images._ORIGINALS)
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(load, range(800)))
    gc.collect()
    assert len(images._ORIGINALS) == before
