"""Remote-backend client overhead for one JPEG photo: everything the SDK does on the client (decode,
resize to the grid, cache hash, encode the image, build and send the JSON body, parse the answer)
against an in-process HTTP transport that answers at once (``httpx.MockTransport``).

Same run: a 4032x3024 photo before issue 16 (full-size decode, PNG body) against after (reduced-size
decode, PNG body: the default, pixel-exact) and after with ``image_format="JPEG", jpeg_quality=90``; and
a 1036x756 photo (the grid size of a 1024x768 one: 999 vision tokens), which already fits the grid, re-
encoded as PNG (``send_original_bytes=False``) against sent as its original bytes (the default). Median ms.

    .venv/bin/python -m benchmarks.bench_remote_client [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any
from unittest import mock

import httpx

from benchmarks.bench_image_prep import photo
from grvl_sdk import Guard
from grvl_sdk.backends.remote import RemoteBackend
from grvl_sdk.testing import guard_output


def _answer(request: httpx.Request) -> httpx.Response:
    body = {"id": "x", "object": "chat.completion", "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": guard_output("unharmful")}}]}  # fmt: skip
    sizes.append(len(request.content))
    return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


sizes: list[int] = []


def measure(data: bytes, repeats: int, **options: Any) -> tuple[float, int]:
    backend = RemoteBackend("http://guard.test/v1", model="guard", transport=httpx.MockTransport(_answer), **options)
    guard = Guard(backend, cache_size=0, micro_batching=False)
    guard.check("what is in this photo?", image=data)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        guard.check("what is in this photo?", image=data)
        times.append((time.perf_counter() - start) * 1000)
    guard.close()
    return statistics.median(times), sizes[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    data = photo(4032, 3024)
    with mock.patch("grvl_sdk.images._draft", lambda image, max_pixels, grid: None):  # before: full decode
        before = measure(data, args.repeats)
    after_png = measure(data, args.repeats)
    after_jpeg = measure(data, args.repeats, image_format="JPEG", jpeg_quality=90)
    fits = photo(1036, 756)
    fits_png = measure(fits, args.repeats, send_original_bytes=False)
    fits_original = measure(fits, args.repeats)
    print(f"4032x3024 JPEG photo ({len(data) / 1e6:.2f} MB), 1036x756 JPEG photo ({len(fits) / 1e6:.2f} MB), "
          f"median of {args.repeats}\n")  # fmt: skip
    print("| client path | ms | request body | ms ÷ baseline |")
    print("|---|---|---|---|")
    for name, (ms, size), base in (
        ("4032×3024, before: full decode, PNG (baseline)", before, before),
        ("4032×3024, after: reduced decode, PNG (default)", after_png, before),
        ("4032×3024, after: reduced decode, JPEG q90", after_jpeg, before),
        ("1036×756 (fits the grid), re-encoded as PNG (baseline)", fits_png, fits_png),
        ("1036×756 (fits the grid), original bytes (default)", fits_original, fits_png),
    ):
        print(f"| {name} | {ms:.1f} | {size / 1e6:.2f} MB | {ms / base[0]:.2f} |")


if __name__ == "__main__":
    main()
