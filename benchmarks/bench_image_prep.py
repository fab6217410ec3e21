"""Host-side image preparation of a 12 MP JPEG photo: full decode + grid resize (before issue 16)
against the reduced-size (DCT-scaled) decode + one resize (after), same run, same image.

Both paths end at the model's grid (``smart_resize`` of the full size, default bounds) and include the
verdict-cache content hash of the prepared pixels. Reported: median ms over ``--repeats`` runs, the
after ÷ before ratio, and how far the two results' pixels differ.

    .venv/bin/python benchmarks/bench_image_prep.py [--width 4032 --height 3024] [--repeats 15]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

from PIL import Image

from grvl_sdk._constants import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from grvl_sdk.cache import content_hashes
from grvl_sdk.images import load_images, resize_to_grid
from grvl_sdk.types import GuardInput

GRID = (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)


def photo(width: int, height: int) -> bytes:
    """A photo-like JPEG (smooth gradients plus noise, quality 90)."""
    noise = Image.effect_noise((width, height), 40)
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", (gradient, noise, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def before(data: bytes) -> Image.Image:
    [image] = load_images(data, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS)  # full decode
    image = resize_to_grid(image, min_pixels=GRID[0], max_pixels=GRID[1])
    content_hashes(GuardInput(text="x", images=(image,)))
    return image


def after(data: bytes) -> Image.Image:
    [image] = load_images(data, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, grid=GRID)  # what Guard.prepare does
    content_hashes(GuardInput(text="x", images=(image,)))
    return image


def timed(fn: Callable[[bytes], Image.Image], data: bytes, repeats: int) -> float:
    fn(data)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(data)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4032)
    parser.add_argument("--height", type=int, default=3024)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    data = photo(args.width, args.height)
    old, new = before(data), after(data)
    assert old.size == new.size
    diff = sum(abs(a - b) for a, b in zip(old.tobytes(), new.tobytes(), strict=True)) / len(old.tobytes())
    t_old, t_new = timed(before, data, args.repeats), timed(after, data, args.repeats)
    print(f"{args.width}x{args.height} JPEG ({len(data) / 1e6:.1f} MB) -> {new.size[0]}x{new.size[1]} grid, "
          f"median of {args.repeats}\n")  # fmt: skip
    print("| path | ms | after ÷ before |")
    print("|---|---|---|")
    print(f"| before: full decode + resize + hash | {t_old:.1f} | |")
    print(f"| after: reduced decode + one resize + hash | {t_new:.1f} | {t_new / t_old:.2f} |")
    print(f"\nmean absolute pixel difference between the two results: {diff:.2f} / 255")


if __name__ == "__main__":
    main()
