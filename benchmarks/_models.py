"""Random-weight Qwen2.5-VL models of real shapes, for benchmarks (offline: no download).

Shapes (:data:`SHAPES`):

- ``"tiny"``: the tiny guard's towers (``grvl_sdk.testing.build_tiny_guard``) and its 654-token tokenizer.
- ``"mid"``: a Qwen2-0.5B-shaped text tower (hidden 896, 24 layers, 14 heads, 2 KV heads, tied embeddings,
  151,936-row embedding) and a vision tower of the real geometry (patch 14, spatial merge 2, temporal
  patch 2, window 112, full-attention blocks, hidden 1280) with 8 blocks instead of 32: about 0.68 B
  parameters, so that figures on CPU are not dominated by the tiny model's Python overhead.
- ``"3b"``: Qwen2.5-VL-3B-Instruct's towers.

``"mid"`` and ``"3b"`` get a **Qwen-sized tokenizer** (:func:`qwen_sized_tokenizer`): the tiny guard's
byte-level BPE (its merges, pre-tokenizer and normaliser, so English prompts tokenise to the tiny guard's
realistic lengths) grown to Qwen's 151,643 regular entries with one merge each, then Qwen2.5's 22 added
tokens at Qwen's own ids (``<|endoftext|>`` = 151643 ... ``<|video_pad|>`` = 151656, ``<tool_call>`` =
151657 ... ``<|file_sep|>`` = 151664). The grown entries are random strings of the byte-level characters of
bytes 128-255 (never ASCII), so ASCII text never reaches them; text with non-ASCII characters may. The
chat template, image processor and special tokens are those of the released checkpoints, so
``Guard.from_pretrained`` loads the folder through the real code path.

Builds are cached (``build_model(shape)`` with no folder returns the cache entry; do not write into it):
``$GRVL_CACHE_DIR/bench-models/<shape>-<dtype>-<key>`` (default ``~/.cache/grvl-sdk``), keyed by a hash of
the recipe and the torch / transformers / tokenizers versions. CLI::

    .venv/bin/python benchmarks/_models.py --shape mid [--dtype bfloat16] [--out DIR]   # prints the folder
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers

from grvl_sdk.testing import QWEN_SPECIAL_TOKENS, build_tiny_guard
from grvl_sdk.testing.trained import cache_root

# Qwen2.5-VL-3B-Instruct's config.json (text and vision towers).
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "3b": {
        "text": {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        "vision": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
    },
    # Qwen2-0.5B's text tower (head_dim 64: mrope_section sums to 32); Qwen2.5-VL's vision tower, 8 blocks.
    "mid": {
        "text": {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
        },
        "vision": {
            "depth": 8,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 896,
            "fullatt_block_indexes": [1, 3, 5, 7],
        },
    },
    "tiny": {
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 704,
            "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        },
        "vision": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
        },
    },
}

#: Qwen's regular (BPE) vocabulary size; its added tokens start at this id.
QWEN_REGULAR_VOCAB = 151_643
#: Qwen2.5's added tokens after :data:`QWEN_SPECIAL_TOKENS` (not special: they are kept when decoding).
QWEN_EXTRA_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# The released Qwen2.5-VL image processor's pixel bounds (preprocessor_config.json).
_QWEN_PIXELS = {"shortest_edge": 3136, "longest_edge": 12845056}
# Bump when a build's meaning changes in a way the hashed settings do not show.
_RECIPE_VERSION = 1
_COMPLETE = "bench-model.json"


def _byte_level_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table, as the byte-level pre-tokenizer uses it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def qwen_sized_tokenizer(base: Any, *, size: int = QWEN_REGULAR_VOCAB, seed: int = 0) -> Any:
    """``base`` (the tiny guard's ``Qwen2TokenizerFast``) grown to ``size`` regular entries, with Qwen2.5's
    added tokens at ``size``, ``size + 1``, ... in Qwen's order. Returns a ``Qwen2TokenizerFast``.

    Each new entry is the concatenation of two existing high-byte entries, added with its merge (after
    the base merges, so they never change how ASCII text is split)."""
    from tokenizers import AddedToken, Tokenizer

    data = json.loads(base.backend_tokenizer.to_str())
    model = data["model"]
    vocab: dict[str, int] = {t: i for t, i in model["vocab"].items() if i < len(model["vocab"])}
    merges = [list(m) if isinstance(m, list) else m.split(" ", 1) for m in model["merges"]]
    by_length: dict[int, list[str]] = {1: [_byte_level_chars()[b] for b in range(128, 256)]}
    rng = random.Random(seed)
    while len(vocab) < size:
        left = rng.choice(by_length[rng.choice([n for n in by_length if n <= 3])])
        right = rng.choice(by_length[rng.choice([n for n in by_length if n <= 3])])
        token = left + right
        if token in vocab:
            continue
        vocab[token] = len(vocab)
        merges.append([left, right])
        by_length.setdefault(len(token), []).append(token)
    model["vocab"], model["merges"] = vocab, merges
    data["added_tokens"] = []
    raw = Tokenizer.from_str(json.dumps(data))
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    raw.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_EXTRA_ADDED_TOKENS])
    tokenizer = transformers.Qwen2TokenizerFast(
        tokenizer_object=raw,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        errors="replace",
        split_special_tokens=False,
    )
    tokenizer.chat_template = base.chat_template
    expected = {t: size + i for i, t in enumerate((*QWEN_SPECIAL_TOKENS, *QWEN_EXTRA_ADDED_TOKENS))}
    got = {t: tokenizer.convert_tokens_to_ids(t) for t in expected}
    if got != expected or len(tokenizer) != size + len(expected):
        raise RuntimeError(f"Qwen-sized tokenizer: added tokens at {got}, {len(tokenizer)} in all")
    return tokenizer


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    return {name: metadata.version(name) for name in ("torch", "transformers", "tokenizers")}


def cache_key(shape: str, dtype: str, seed: int = 0) -> str:
    """16 hex digits over the recipe (shape, dtype, seed, tokenizer sizes, the tiny guard's source) and
    the library versions."""
    import grvl_sdk.testing.tiny as tiny

    settings = {
        "shape": SHAPES[shape],
        "dtype": dtype,
        "seed": seed,
        "version": _RECIPE_VERSION,
        "vocab": [QWEN_REGULAR_VOCAB, QWEN_SPECIAL_TOKENS, QWEN_EXTRA_ADDED_TOKENS, _QWEN_PIXELS],
        "libraries": _versions(),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(Path(tiny.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _write_model(shape: str, folder: Path, device: str, dtype: torch.dtype, seed: int) -> None:
    """The checkpoint of ``shape`` written to ``folder`` (random weights in ``dtype``)."""
    build_tiny_guard(folder)
    tiny = transformers.AutoConfig.from_pretrained(folder)
    generation = transformers.GenerationConfig.from_pretrained(folder)
    spec = SHAPES[shape]
    if shape == "tiny":
        ids = {
            k: getattr(tiny, k)
            for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        }
        special = {k: getattr(tiny.text_config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    else:
        tokenizer = qwen_sized_tokenizer(transformers.AutoTokenizer.from_pretrained(folder), seed=seed)
        for stale in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json"):
            (folder / stale).unlink(missing_ok=True)
        tokenizer.save_pretrained(folder)
        token = tokenizer.convert_tokens_to_ids
        ids = {
            "image_token_id": token("<|image_pad|>"),
            "video_token_id": token("<|video_pad|>"),
            "vision_start_token_id": token("<|vision_start|>"),
            "vision_end_token_id": token("<|vision_end|>"),
        }
        special = {
            "bos_token_id": token("<|endoftext|>"),
            "eos_token_id": token("<|im_end|>"),
            "pad_token_id": token("<|endoftext|>"),
        }
        generation.bos_token_id = special["bos_token_id"]
        generation.pad_token_id = special["pad_token_id"]
        generation.eos_token_id = [special["eos_token_id"], special["pad_token_id"]]
        _use_qwen_pixel_bounds(folder)
    dtype_name = str(dtype).removeprefix("torch.")
    # ``layer_types`` has one entry per layer: derived anew from the shape's layer count.
    text = {k: v for k, v in tiny.text_config.to_dict().items() if k != "layer_types"}
    text = {**text, **spec["text"], **special, "dtype": dtype_name}
    vision = {**tiny.vision_config.to_dict(), **spec["vision"], "dtype": dtype_name}
    config = transformers.Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=spec["text"]["tie_word_embeddings"], **ids
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the saved dtype: no full-size float32 copy on the way
    try:
        with torch.device(device):
            model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config = generation
    model.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _use_qwen_pixel_bounds(folder: Path) -> None:
    """The released image processor's pixel bounds instead of the tiny guard's (56² .. 112²)."""
    preprocessor = folder / "preprocessor_config.json"
    data = json.loads(preprocessor.read_text(encoding="utf-8"))
    data["size"] = dict(_QWEN_PIXELS)
    data["min_pixels"], data["max_pixels"] = _QWEN_PIXELS["shortest_edge"], _QWEN_PIXELS["longest_edge"]
    preprocessor.write_text(json.dumps(data, indent=2), encoding="utf-8")
    processor = folder / "processor_config.json"
    if processor.is_file():
        data = json.loads(processor.read_text(encoding="utf-8"))
        if isinstance(data.get("video_processor"), dict):
            data["video_processor"]["size"] = dict(_QWEN_PIXELS)
        processor.write_text(json.dumps(data, indent=2), encoding="utf-8")


@contextlib.contextmanager
def _lock(entry: Path) -> Iterator[None]:
    """One build per cache entry at a time (POSIX ``flock``); other processes wait, then reuse it."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # builds stay atomic (rename), only possibly repeated
        yield
        return
    with open(entry.parent / f"{entry.name}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_model(
    shape: str,
    folder: str | Path | None = None,
    device: str = "cpu",
    *,
    dtype: str = "bfloat16",
    seed: int = 0,
    cache: bool | None = None,
) -> Path:
    """A random-weight checkpoint of ``shape`` (:data:`SHAPES`), saved in ``dtype`` (``"bfloat16"``, as
    the released checkpoints, or ``"float32"``); returns its folder.

    ``folder=None``: the cache entry itself (built on first use; treat it as read-only). With a
    ``folder``, the files are copied there (or written there directly when ``cache`` is false).
    ``cache`` defaults to true except on CUDA (lent GPU machines start empty: a cache would never be
    reused there). ``device`` is where the weights are initialised. The ``"mid"`` shape builds in about
    a minute on 2 CPU cores (1.4 GB in bfloat16, 2.7 GB in float32).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use 'bfloat16', 'float16' or 'float32'")
    if cache is None:
        cache = not device.startswith("cuda")
    if not cache:
        if folder is None:
            raise ValueError("build_model(cache=False) needs a folder to write to")
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        _write_model(shape, target, device, torch_dtype, seed)
        return target
    entry = cache_root() / "bench-models" / f"{shape}-{dtype}-{cache_key(shape, dtype, seed)}"
    if not (entry / _COMPLETE).is_file():
        with _lock(entry):
            if not (entry / _COMPLETE).is_file():
                staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
                try:
                    _write_model(shape, staging, device, torch_dtype, seed)
                    info = {"shape": shape, "dtype": dtype, "seed": seed, "libraries": _versions()}
                    (staging / _COMPLETE).write_text(json.dumps(info, indent=2), encoding="utf-8")
                    for item in (staging, *staging.iterdir()):  # mkdtemp's 0700: readable by every user
                        item.chmod(0o755 if item.is_dir() else 0o644)
                    shutil.rmtree(entry, ignore_errors=True)  # an incomplete leftover
                    staging.rename(entry)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
    if folder is None:
        return entry
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for item in entry.iterdir():
        if item.is_file() and item.name != _COMPLETE:
            shutil.copyfile(item, target / item.name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mid")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="copy the checkpoint here (default: print the cache entry)")
    args = parser.parse_args()
    print(build_model(args.shape, args.out, args.device, dtype=args.dtype))


if __name__ == "__main__":
    main()
