"""Image budget: vision tokens and check latency per image size and pixel budget, on the tiny guard.

For each budget (``max_pixels`` 768*768 = the R-SFT cap, 1280*28*28 = the SDK's default, 16384*28*28 = the
authors' evaluation) and each image size (256x256, 1024x768, 2048x1536, 4032x3024) it builds the tiny
random guard (:func:`grvl_sdk.testing.build_tiny_guard`) with that budget, checks a text + image input
and prints the vision tokens the encoder gave the image (``image_grid_thw`` / 4) and the median latency
of ``guard.check`` (image resize, encoding, vision tower, prefill and ``--new-tokens`` decode steps).

    .venv/bin/python benchmarks/bench_image_budget.py [--repeats 5] [--new-tokens 8] [--device cpu]
        [--max-seconds 60]

The tiny model has the real vision tower's shape rules (patch 14, 2x2 merge, window attention with one
full-attention block) but tiny widths, so absolute times are small; the growth with vision tokens is the
point. Accuracy at each budget is the paper's setting, not measured here (see docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

from PIL import Image

SIZES = [(256, 256), (1024, 768), (2048, 1536), (4032, 3024)]
BUDGETS = [("768*768", 768 * 768), ("1280*28*28", 1280 * 28 * 28), ("16384*28*28", 16384 * 28 * 28)]
MIN_PIXELS = 4 * 28 * 28


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="guard checkpoint (default: a freshly built tiny guard)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed checks per cell (after one warm-up)")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop repeating a cell after this long")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)

    from grvl_sdk import Guard
    from grvl_sdk.images import smart_resize
    from grvl_sdk.testing import build_tiny_guard

    model_path = args.model or str(build_tiny_guard(tempfile.mkdtemp(prefix="grvl-bench-")))
    images = {size: Image.effect_noise(size, 60).convert("RGB") for size in SIZES}
    text = "What is shown here?"
    guards = {
        budget: Guard.from_pretrained(
            model_path,
            device=args.device,
            min_pixels=MIN_PIXELS,
            max_pixels=budget,
            max_new_tokens=args.new_tokens,
            cache_size=0,
            micro_batching=False,
        )
        for _, budget in BUDGETS
    }
    cells = [(label, budget, size) for label, budget in BUDGETS for size in SIZES]
    grids: dict[tuple[int, tuple[int, int]], tuple[int, int, int]] = {}
    for _, budget, size in cells:  # the encoder's grid must be the rule's; one warm-up check per cell
        guard = guards[budget]
        backend = guard.backend
        item = guard.prepare(text, image=images[size])
        batch = backend.encoder.encode_batch([item], device=backend.device, pixel_dtype=backend._pixel_dtype())
        tokens = int(batch.image_grid_thw.prod()) // backend.encoder.merge_size**2
        height, width = smart_resize(size[1], size[0], min_pixels=MIN_PIXELS, max_pixels=budget)
        if tokens != (height // 28) * (width // 28):
            raise SystemExit(f"encoder grid {batch.image_grid_thw.tolist()} differs from smart_resize")
        grids[(budget, size)] = (width, height, tokens)
        guard.check(text, image=images[size])
    # Interleaved repeats (drift and other load on the machine hit every cell alike); a cell stops
    # repeating once its checks took --max-seconds.
    times: dict[tuple[int, tuple[int, int]], list[float]] = {(b, size): [] for _, b, size in cells}
    for _ in range(args.repeats):
        for _, budget, size in cells:
            spent = times[(budget, size)]
            if spent and sum(spent) >= args.max_seconds:
                continue
            t0 = time.perf_counter()
            guards[budget].check(text, image=images[size])
            spent.append(time.perf_counter() - t0)
    print("| image | max_pixels | grid (px) | vision tokens | median check (ms) | checks |")
    print("|---|---|---|---:|---:|---:|")
    for label, budget, size in cells:
        width, height, tokens = grids[(budget, size)]
        median = statistics.median(times[(budget, size)]) * 1000
        count = len(times[(budget, size)])
        print(f"| {size[0]}×{size[1]} | {label} | {width}×{height} | {tokens:,} | {median:,.0f} | {count} |")
    for guard in guards.values():
        guard.close()


if __name__ == "__main__":
    main()
