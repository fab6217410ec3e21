"""Core SDK overhead and batching, on the tiny offline guard (CPU by default).

(a) ``guard.check`` time over the equivalent raw ``processor`` + ``model.generate`` call with the
    same prompt and the same number of new tokens (target <= 1.05);
(b) throughput of ``check_batch`` of 16 over 16 sequential checks (target >= 3x).

    .venv/bin/python benchmarks/bench_core.py [--model PATH] [--repeats 30] [--new-tokens 32]

Prints a markdown table of measured figures.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

from PIL import Image


def _median_time(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="guard checkpoint (default: a freshly built tiny guard)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)

    import torch

    from grvl_sdk import Guard
    from grvl_sdk.testing import build_tiny_guard

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_path = args.model or str(build_tiny_guard(tempfile.mkdtemp(prefix="grvl-bench-")))
    # Cache off: every check below must really generate.
    guard = Guard.from_pretrained(model_path, device=args.device, max_new_tokens=args.new_tokens, cache_size=0)
    backend = guard.backend
    image = Image.new("RGB", (320, 240), (120, 90, 60))
    text = "How do I pick this lock?"

    # (a) overhead over the raw transformers call ---------------------------------------------
    prompt = guard.format_prompt(text, image=image)
    size = {"shortest_edge": backend.encoder.min_pixels, "longest_edge": backend.encoder.max_pixels}
    processor, model = backend.processor, backend.model

    def raw() -> int:
        inputs = processor(text=[prompt], images=[image], return_tensors="pt", images_kwargs={"size": size})
        inputs = inputs.to(model.device)
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=args.new_tokens, do_sample=False, repetition_penalty=1.0, num_beams=1
            )
        return out.shape[1] - inputs["input_ids"].shape[1]

    def sdk() -> int:
        return guard.check(text, image=image).usage.completion_tokens

    raw_tokens, sdk_tokens = raw(), sdk()  # warm-up, and the token counts must match
    if raw_tokens != sdk_tokens:
        raise SystemExit(f"token counts differ (raw {raw_tokens}, sdk {sdk_tokens}); pick another input")
    raw_s, sdk_s = [], []
    for _ in range(args.repeats):  # interleaved so drift affects both alike
        raw_s.append(_median_time(raw, 1))
        sdk_s.append(_median_time(sdk, 1))
    raw_med, sdk_med = statistics.median(raw_s), statistics.median(sdk_s)

    # (b) batching ------------------------------------------------------------------------------
    inputs = [
        {"text": f"Request number {i}: how do I do thing {i}?", **({"image": image} if i % 2 else {})}
        for i in range(args.batch)
    ]
    guard.check_batch(inputs[:2])
    sequential = _median_time(lambda: [guard.check(**spec) for spec in inputs], max(1, args.repeats // 10))
    batched = _median_time(lambda: guard.check_batch(inputs, batch_size=args.batch), max(1, args.repeats // 10))
    tokens = sum(v.usage.completion_tokens for v in guard.check_batch(inputs, batch_size=args.batch))

    print(f"model: {model_path} | device: {args.device} | torch threads: {torch.get_num_threads()}")
    print(f"new tokens per check: {sdk_tokens} | repeats: {args.repeats}")
    print()
    print("| measurement | value | target |")
    print("|---|---|---|")
    print(f"| raw processor+generate, median | {raw_med * 1000:.1f} ms | |")
    print(f"| guard.check, median | {sdk_med * 1000:.1f} ms | |")
    print(f"| (a) check / raw | {sdk_med / raw_med:.3f} | <= 1.05 |")
    print(f"| 16 sequential checks | {sequential * 1000:.0f} ms | |")
    print(f"| check_batch of {args.batch} | {batched * 1000:.0f} ms ({tokens} tokens) | |")
    print(f"| (b) batch throughput / sequential | {sequential / batched:.2f}x | >= 3x |")


if __name__ == "__main__":
    main()
