"""Load time: ``Guard.from_pretrained`` against the raw transformers load of the same checkpoint, and
the label-trigger scan over a 151k-token vocabulary (per-id ``batch_decode``, before issue 16, against
the Rust backend's ``decode_batch``, after), same run.

The checkpoint is the tiny offline guard unless ``--model`` is given; the 151k vocabulary is a synthetic
byte-level BPE vocabulary of Qwen's size (no download).

    .venv/bin/python benchmarks/bench_load.py [--model PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def qwen_sized_tokenizer(size: int = 151_643) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = list(ByteLevel.alphabet())
    rng = random.Random(0)
    vocab = {c: i for i, c in enumerate(alphabet)}
    while len(vocab) < size:
        token = ("Ġ" if rng.random() < 0.3 else "") + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7)))
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|image_pad|>"]})
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers

    from grvl_sdk import Guard
    from grvl_sdk.backends._processor import load_processor
    from grvl_sdk.backends.local import _decode_each
    from grvl_sdk.testing import build_tiny_guard

    path = args.model or str(build_tiny_guard(tempfile.mkdtemp(prefix="grvl-bench-")))

    def raw() -> None:
        load_processor(path)
        transformers.AutoModelForImageTextToText.from_pretrained(path).eval()

    raw()  # warm the file cache and imports
    t_raw = timed(raw, args.repeats)
    t_guard = timed(lambda: Guard.from_pretrained(path, device="cpu").close(), args.repeats)
    tokenizer = qwen_sized_tokenizer()
    ids = range(len(tokenizer))
    old = tokenizer.batch_decode([[i] for i in ids])
    assert _decode_each(tokenizer, ids) == old
    t_old = timed(lambda: tokenizer.batch_decode([[i] for i in ids]), args.repeats)
    t_new = timed(lambda: _decode_each(tokenizer, ids), args.repeats)
    print(f"checkpoint {path}; median of {args.repeats}\n")
    print("| measurement | s | ratio |")
    print("|---|---|---|")
    print(f"| raw transformers load (processor + model) | {t_raw:.3f} | |")
    print(f"| Guard.from_pretrained | {t_guard:.3f} | {t_guard / t_raw:.2f} × raw |")
    print(f"| label scan, {len(tokenizer)} ids: batch_decode (before) | {t_old:.3f} | |")
    print(f"| label scan: backend decode_batch (after) | {t_new:.3f} | {t_new / t_old:.2f} × before |")


if __name__ == "__main__":
    main()
