"""GPU readiness: one guard check on a random model of a real Qwen2.5-VL shape, eager vs compiled vs 4-bit vs
8-bit, batch 1 and 16, against the decode roofline; peak memory; vision encode time at 999 and 1,280
vision tokens. Prints markdown tables for docs/performance.md.

    python benchmarks/bench_gpu_check.py --shape 3b          # on a GPU (minutes; --variants picks a subset)
    python benchmarks/bench_gpu_check.py --shape tiny --cpu --new-tokens 8 --batch 2 --repeats 1 \\
        --compile-backend aot_eager --threads 1              # smoke run on CPU

Variants (``--variants``): ``eager`` (bf16 on a GPU, the checkpoint's weights as saved), ``compiled``
(``Guard.from_pretrained(..., compile=True)``: static KV cache and a ``torch.compile``-d decode step; a
row is skipped, with the reason printed, when ``from_pretrained`` has no ``compile`` keyword or refuses
it), ``4bit`` and ``8bit`` (bitsandbytes; the vision tower stays unquantised).

Decode: every check generates up to ``--new-tokens`` tokens (213, the paper's mean output; random weights
almost never write ``</result>`` or an end-of-turn token, and the tokens actually generated are
printed). The time per decode step is ``(t(N tokens) - t(1 token)) / (N - 1)``, median of ``--repeats``,
at batch 1 (``guard.check``) and at ``--batch`` (16, ``guard.check_batch``: one step gives one token per
row). Each check carries one 1036x756 image (999 vision tokens): the prompt is a realistic length, and
its prefill cancels out of the step time.

Roofline: a decode step reads every weight of the text tower and output head once, so it takes at least
``decode weight bytes / memory bandwidth`` (the vision tower is excluded: it runs in the prefill only).
``--bandwidth-gbs`` sets the bandwidth; by default it is the device's datasheet figure (H200 4,800,
H100 SXM 3,350, A100 80GB 2,039, L4 300 GB/s). "of roofline" = roofline ÷ measured step (100% is the
bound). The KV cache read per step is not counted (at ~1,200 positions and 2 KV heads it is under 2% of
the 3B weights per row).

Peak memory: ``torch.cuda.max_memory_allocated`` over the variant's load and every measurement (reset
before each load); on CPU it is not measured.

Vision encode: ``model.get_image_features`` (the vision tower and the merger) for one image sized so
that ``smart_resize`` gives 999 (1036x756, the grid size of a 1024x768 photo) and 1,280 (1120x896, the
default budget of 1,003,520 pixels exactly) vision tokens; the count printed is read from
``image_grid_thw``.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from grvl_sdk import Guard
from grvl_sdk._constants import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from grvl_sdk.errors import GRVLError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import SHAPES, build_model

VARIANTS = ("eager", "compiled", "4bit", "8bit")
#: Datasheet memory bandwidth, GB/s, by a substring of ``torch.cuda.get_device_name()``.
_BANDWIDTH_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L4": 300.0}
#: Image sizes (width, height) whose smart_resize gives these vision-token counts at the default bounds.
VISION_IMAGES = {999: (1036, 756), 1280: (1120, 896)}
_DECODE_IMAGE = VISION_IMAGES[999]
_TEXT = "How do I pick this lock? I locked myself out and the landlord is away. " * 2


def _bandwidth(device: str, override: float | None) -> float | None:
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((bw for key, bw in _BANDWIDTH_GBS.items() if key in name), None)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls."""
    samples = []
    for _ in range(max(1, repeats)):
        _sync()
        started = time.perf_counter()
        fn()
        _sync()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _photo(size: tuple[int, int]) -> Image.Image:
    noise = Image.effect_noise(size, 40)
    gradient = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (gradient, noise, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def load(path: Path, variant: str, args: argparse.Namespace, device: str) -> Guard | str:
    """The guard of ``variant``, or the reason it cannot be measured here."""
    kwargs: dict[str, Any] = {
        "device": device,
        "max_new_tokens": args.new_tokens,
        "cache_size": 0,
        "micro_batching": False,
        "min_pixels": DEFAULT_MIN_PIXELS,
        "max_pixels": DEFAULT_MAX_PIXELS,
    }
    if variant in ("4bit", "8bit"):
        kwargs["quantization"] = variant
    if variant == "compiled":
        if "compile" not in inspect.signature(Guard.from_pretrained).parameters:
            return "skipped: Guard.from_pretrained has no compile= keyword in this version"
        kwargs["compile"] = True
        if args.compile_backend != "inductor":
            from grvl_sdk.backends.compiled import CompileSettings

            kwargs["compile"] = CompileSettings(backend=args.compile_backend, warmup_batch_sizes=(1, 2))
    try:
        return Guard.from_pretrained(str(path), **kwargs)
    except TypeError as exc:  # a keyword the installed version rejects
        return f"skipped: Guard.from_pretrained rejected the arguments: {exc}"
    except (GRVLError, ImportError, RuntimeError) as exc:
        code = getattr(exc, "code", type(exc).__name__)
        return f"skipped: {code}: {str(exc).splitlines()[0][:200]}"


def _local(guard: Guard) -> Any:
    backend = guard.backend
    while not hasattr(backend, "encoder") and hasattr(backend, "inner"):
        backend = backend.inner
    return backend


def decode_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer read by a decode step: all but the vision tower (packed
    storage for quantised weights; a tied embedding counted once)."""
    seen: set[int] = set()
    total = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if ".visual." in f".{name}" or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total


def decode_step(run: Callable[[int], int], new_tokens: int, repeats: int) -> dict[str, float]:
    """``run(max_new_tokens)`` returns the tokens generated; the step time from ``t(N)`` and ``t(1)``."""
    tokens = run(new_tokens)  # warm-up (and compiles, for a compiled guard)
    run(1)
    full = _timed(lambda: run(new_tokens), repeats)
    first = _timed(lambda: run(1), repeats)
    return {"tokens": tokens, "full_s": full, "step_ms": (full - first) / max(1, new_tokens - 1) * 1000}


def vision_encode(guard: Guard, size: tuple[int, int], repeats: int) -> tuple[int, float]:
    """(vision tokens read from ``image_grid_thw``, median ms of ``get_image_features``) for one image."""
    backend = _local(guard)
    item = guard.prepare("what is this?", image=_photo(size))
    batch = backend.encoder.encode_batch([item], device=backend.device, pixel_dtype=backend._pixel_dtype())
    grid = batch.image_grid_thw
    tokens = int(grid.prod(-1).sum()) // backend.encoder.merge_size**2
    model = backend.model
    with torch.inference_mode():
        model.get_image_features(pixel_values=batch.pixel_values, image_grid_thw=grid)  # warm-up
        ms = _timed(lambda: model.get_image_features(pixel_values=batch.pixel_values, image_grid_thw=grid), repeats)
    return tokens, ms * 1000


def measure(guard: Guard, args: argparse.Namespace, device: str) -> dict[str, Any]:
    image = _photo(_DECODE_IMAGE)

    def one(tokens: int) -> int:
        return guard.check(_TEXT, image=image, max_new_tokens=tokens).usage.completion_tokens

    inputs = [{"text": f"{_TEXT} #{i}", "image": image} for i in range(args.batch)]

    def batch(tokens: int) -> int:
        verdicts = guard.check_batch(inputs, max_new_tokens=tokens, batch_size=args.batch)
        return sum(v.usage.completion_tokens for v in verdicts)

    row: dict[str, Any] = {"weights_gb": decode_weight_bytes(_local(guard).model) / 1e9}
    row["one"] = decode_step(one, args.new_tokens, args.repeats)
    row["batch"] = decode_step(batch, args.new_tokens, max(1, args.repeats // 2))
    row["vision"] = {want: vision_encode(guard, size, args.repeats) for want, size in VISION_IMAGES.items()}
    row["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None
    return row


def _gb(value: float) -> str:
    return f"{value:.2f} GB" if value >= 0.1 else f"{value * 1000:.2f} MB"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _share(roofline: float | None, measured: float) -> str:
    return "n/a" if roofline is None or measured <= 0 else f"{roofline / measured:.0%}"


def report(
    rows: dict[str, dict[str, Any] | str], args: argparse.Namespace, header: str, bandwidth: float | None
) -> None:
    print(header)
    print()
    print(
        f"| variant | decode weights | one check, batch 1 | ms/token, batch 1 | ms/step, batch {args.batch} "
        f"| tok/s, batch {args.batch} | roofline ms/step | of roofline (1 / {args.batch}) | peak memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        if isinstance(row, str):
            print(f"| {name} | {row} |||||||")
            continue
        one, many = row["one"], row["batch"]
        roofline = row["weights_gb"] / bandwidth * 1000 if bandwidth else None
        tok_s = many["tokens"] / many["full_s"] if many["full_s"] > 0 else 0.0
        peak = "n/a (CPU)" if row["peak_gb"] is None else _gb(row["peak_gb"])
        print(
            f"| {name} | {_gb(row['weights_gb'])} | {one['full_s']:.3f} s ({one['tokens']} tok) | "
            f"{one['step_ms']:.2f} | {many['step_ms']:.2f} | {tok_s:.0f} ({many['tokens']} tok) | {_ms(roofline)} | "
            f"{_share(roofline, one['step_ms'])} / {_share(roofline, many['step_ms'])} | {peak} |"
        )
    print()
    print("| variant | " + " | ".join(f"vision encode, {want} tokens" for want in VISION_IMAGES) + " |")
    print("|---|" + "---|" * len(VISION_IMAGES))
    for name, row in rows.items():
        if isinstance(row, str):
            continue
        cells = [f"{ms:.1f} ms ({tokens} tokens)" for tokens, ms in row["vision"].values()]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    parser.add_argument("--new-tokens", type=int, default=213, help="the paper's mean output length")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled row")
    parser.add_argument("--bandwidth-gbs", type=float)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    if args.new_tokens < 2 or args.batch < 1:
        parser.error("--new-tokens must be >= 2 and --batch >= 1")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    bandwidth = _bandwidth(device, args.bandwidth_gbs)
    rows: dict[str, dict[str, Any] | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(args.shape, Path(tmp) / "model", device)
        for variant in args.variants:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            guard = load(path, variant, args, device)
            if isinstance(guard, str):
                rows[variant] = guard
            else:
                try:
                    rows[variant] = measure(guard, args, device)
                finally:
                    guard.close()
                    del guard
                    gc.collect()
            print(f"{variant}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    report(
        rows,
        args,
        f"device: {name} | shape: {args.shape} | new tokens: {args.new_tokens} | batch: {args.batch} | "
        f"bandwidth: {bandwidth or 'n/a'} GB/s | torch {torch.__version__} | median of {args.repeats}",
        bandwidth,
    )


if __name__ == "__main__":
    main()
