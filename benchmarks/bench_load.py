"""Load time: ``Guard.from_pretrained`` against the raw transformers load (processor + model, the same
dtype) of the same checkpoint, same run; and what the guard adds on top, part by part.

The checkpoint is the mid-size benchmark model (``benchmarks/_models.py``: Qwen2-0.5B-shaped text tower,
Qwen-sized 151,665-token tokenizer, random weights; built once and cached) unless ``--shape tiny`` or
``--model PATH`` is given. Measured, interleaved, median of ``--repeats``:

- raw: ``AutoProcessor.from_pretrained`` (without torchvision, where it cannot load: ``AutoTokenizer`` +
  ``AutoImageProcessor``, which is what it loads) + ``AutoModelForImageTextToText.from_pretrained(dtype=...)``;
- the guard with its vocabulary scan read from the cache (every load after the first of a tokenizer);
- the guard with an empty scan cache (the first load of a tokenizer: the scan runs and is stored —
  what every load cost before the cache);
- the parts: the vocabulary scan uncached (``batch_decode`` per id, as first written; the Rust
  ``decode_batch``) and from the cache, and the prompt encoder (its private tokenizer copy).

    .venv/bin/python benchmarks/bench_load.py [--shape mid|tiny | --model PATH] [--dtype float32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mid", choices=["mid", "tiny"], help="benchmark model (random weights)")
    parser.add_argument("--model", default=None, help="a checkpoint folder instead of --shape")
    parser.add_argument("--dtype", default="float32", help="dtype of both loads (the guard's CPU default)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers
    from transformers.utils import is_torchvision_available

    from grvl_sdk import Guard
    from grvl_sdk.backends import _token_scan
    from grvl_sdk.backends._processor import load_processor
    from grvl_sdk.protocol.encoding import PromptEncoder
    from grvl_sdk.testing import build_tiny_guard

    if args.model:
        path = args.model
    elif args.shape == "tiny":
        path = str(build_tiny_guard(tempfile.mkdtemp(prefix="grvl-bench-")))
    else:
        from _models import build_model

        path = str(build_model(args.shape))
    dtype = getattr(torch, args.dtype)
    scan_caches = tempfile.mkdtemp(prefix="grvl-bench-scans-")

    def raw() -> None:
        if is_torchvision_available():
            transformers.AutoProcessor.from_pretrained(path)
        else:
            transformers.AutoTokenizer.from_pretrained(path)
            transformers.AutoImageProcessor.from_pretrained(path)
        transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).eval()

    def guard() -> None:
        Guard.from_pretrained(path, device="cpu", dtype=dtype).close()

    def guard_cold() -> None:
        before = os.environ.get("GRVL_CACHE_DIR")
        os.environ["GRVL_CACHE_DIR"] = tempfile.mkdtemp(dir=scan_caches)  # an empty scan cache
        try:
            guard()
        finally:
            if before is None:
                os.environ.pop("GRVL_CACHE_DIR", None)
            else:
                os.environ["GRVL_CACHE_DIR"] = before

    raw()  # warm the file cache and imports
    guard()  # and store the scan in the cache
    times: dict[str, list[float]] = {"raw": [], "guard": [], "guard_cold": []}
    for _ in range(args.repeats):  # interleaved: a load spike on the machine hits all three alike
        for name, fn in (("raw", raw), ("guard", guard), ("guard_cold", guard_cold)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    t_raw, t_guard, t_cold = (statistics.median(times[k]) for k in ("raw", "guard", "guard_cold"))

    processor = load_processor(path)
    tokenizer = processor.tokenizer
    ids = range(len(tokenizer))
    assert _token_scan.decode_each(tokenizer, ids) == tokenizer.batch_decode([[i] for i in ids])
    assert _token_scan.scanned_tokens(tokenizer) == _token_scan.scan_tokens(tokenizer)
    t_batch = timed(lambda: tokenizer.batch_decode([[i] for i in ids]), args.repeats)
    t_scan = timed(lambda: _token_scan.scan_tokens(tokenizer), args.repeats)
    t_cached = timed(lambda: _token_scan.scanned_tokens(tokenizer), args.repeats)
    t_encoder = timed(lambda: PromptEncoder(processor, min_pixels=3136, max_pixels=1003520), args.repeats)

    print(f"checkpoint {path} ({len(tokenizer)} tokens), dtype {args.dtype}, median of {args.repeats}\n")
    print("| measurement | s | ratio |")
    print("|---|---|---|")
    rows = [
        ("raw transformers load (processor + model)", t_raw, ""),
        ("Guard.from_pretrained, scan read from the cache", t_guard, f"**{t_guard / t_raw:.2f} × raw**"),
        ("Guard.from_pretrained, empty scan cache (scan run and stored)", t_cold, f"{t_cold / t_raw:.2f} × raw"),
        ("part: vocabulary scan, per-id `batch_decode` (first version)", t_batch, ""),
        ("part: vocabulary scan, Rust `decode_batch`, uncached", t_scan, ""),
        ("part: vocabulary scan read from the cache (checked)", t_cached, f"{t_cached / t_scan:.3f} × uncached"),
        ("part: prompt encoder (its private tokenizer)", t_encoder, f"{t_encoder / t_raw:.3f} × raw"),
    ]
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
