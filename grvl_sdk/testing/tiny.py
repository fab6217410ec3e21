"""Tiny offline GuardReasoner-VL-shaped checkpoints: random (plumbing) or trained on a toy rule.

``build_tiny_guard(path)`` writes a Qwen2.5-VL checkpoint with the real architecture, the real image
processor settings (patch 14, merge 2), the **stock Qwen2.5-VL chat template** and a small byte-level
BPE tokenizer trained locally with the Qwen special tokens, in about a second with no network.
``Guard.from_pretrained(path)`` loads it through the same code path as a released model.

By default its weights are random: its verdicts are meaningless (it usually writes unparseable text,
which the SDK reports as a failed verdict). Use it to test the plumbing of guarded apps, never to judge
content. ``build_tiny_guard(path, trained=True)`` also trains it, in seconds on CPU, to follow the toy
rule of :mod:`grvl_sdk.testing.toy_rule` (see :mod:`grvl_sdk.testing.trained`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from grvl_sdk._lazy import require

__all__ = ["QWEN2_5_VL_CHAT_TEMPLATE", "QWEN_SPECIAL_TOKENS", "build_random_guard", "build_tiny_guard"]


#: The chat template shipped with Qwen2.5-VL-Instruct (and the GuardReasoner-VL checkpoints).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Qwen2.5-VL's added special tokens, in the order of the released tokenizer.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenisation pattern (splits text the way the real tokenizer does).
_QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CORPUS = [
    "You are a classifier for analyzing interactions between humans and AI.",
    "Given a request from a human user and a response from an AI assistant, finish two tasks.",
    "Task 1: determine whether the human user's request is harmful or unharmful.",
    "Task 2: determine whether the AI assistant's response is harmful or unharmful.",
    "You must think step by step. Keep consistency between the reasoning and the Answers.",
    "Put the reasoning process into <think> </think>. Put the result into <result> </result>.",
    "Human user:\n<image>\nHow do I pick this lock?\n\nAI assistant:\nNone\n\n",
    "<think>\nStep 1: the request asks about the image.\nStep 2: the response refuses.\n</think>\n",
    "<result>\nRequest: harmful\nResponse: unharmful\n</result>",
    "<result>\nRequest: unharmful\nResponse: None\n</result>",
    "The quick brown fox jumps over the lazy dog 0123456789 !?.,;:'\"()[]{}<>/\\|@#$%^&*-_=+~`",
]


def _train_tokenizer(vocab_size: int, corpus: list[str]):
    tokenizers = require("tokenizers", extra="local")
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    return tok


def build_tiny_guard(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    vocab_size: int = 640,
    trained: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    fast_fraction: float = 0.0,
) -> Path:
    """Write a tiny Qwen2.5-VL guard checkpoint to ``path`` (created if missing) and return it as a ``Path``.

    About 0.4 M parameters (1.5 MB); loads in a fraction of a second on CPU; 4-bit/8-bit quantisable with
    bitsandbytes (every quantised Linear has an input size that is a multiple of 64). ``seed`` seeds the
    weights; ``vocab_size`` is the BPE vocabulary before the special tokens.

    ``trained=False`` (default): random weights, built in about a second, meaningless verdicts.
    ``trained=True``: the same architecture trained on CPU to write well-formed outputs that follow the
    toy rule of :mod:`grvl_sdk.testing.toy_rule` ("bomb"/"poison" ⇒ harmful). It is built once per
    settings (10–30 s on 2 CPU cores) and cached under ``cache_dir`` (default ``$GRVL_CACHE_DIR``, else
    ``~/.cache/grvl-sdk``), then copied into ``path``; see :func:`grvl_sdk.testing.trained.build_trained_guard`.
    ``fast_fraction`` (with ``trained=True``): the share of training samples without reasoning, so the
    guard also follows the rule in ``mode="fast"`` (0, the default: trained to reason first; its fast-mode
    labels are meaningless). Raises ``ValueError`` outside [0, 1] or without ``trained=True``.

    Raises :class:`~grvl_sdk.errors.MissingDependencyError` without torch/transformers/tokenizers
    (``pip install 'grvl-sdk[local]'``), or for ``trained=True`` without TRL and the other training
    packages (``pip install 'grvl-sdk[train]'``).
    """
    if not 0.0 <= fast_fraction <= 1.0:  # NaN fails too
        raise ValueError(f"fast_fraction must be in [0, 1], got {fast_fraction!r}")
    if fast_fraction and not trained:
        raise ValueError("fast_fraction needs trained=True (a random guard is not trained at all)")
    if trained:
        from grvl_sdk.testing.trained import TinyGuardRecipe, build_trained_guard

        recipe = TinyGuardRecipe(seed=seed, vocab_size=vocab_size, fast_fraction=fast_fraction)
        return build_trained_guard(path, cache_dir=cache_dir, recipe=recipe)
    return build_random_guard(path, seed=seed, vocab_size=vocab_size)


def build_random_guard(
    path: str | os.PathLike[str], *, seed: int = 0, vocab_size: int = 640, extra_corpus: tuple[str, ...] = ()
) -> Path:
    """The random tiny guard of :func:`build_tiny_guard` (``trained=False``), written to ``path``.

    ``extra_corpus`` adds lines to the text the tokenizer is trained on (the trained guard adds its
    trigger words, so that they become whole tokens); empty, the tokenizer is the one of every
    random build.
    """
    torch = require("torch", extra="local")
    transformers = require("transformers", extra="local")

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    raw = _train_tokenizer(vocab_size, [*_CORPUS, *extra_corpus])
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
    tokenizer.add_special_tokens({"pad_token": "<|endoftext|>"})
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE

    total_vocab = len(tokenizer)
    padded_vocab = ((total_vocab + 63) // 64) * 64
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}

    text_config = {
        "vocab_size": padded_vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": False,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "in_chans": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [1],
    }
    config = transformers.Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    model.eval()
    # The released checkpoints carry Qwen's sampling defaults; keep them so the SDK's override is tested.
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
        repetition_penalty=1.05,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)

    image_processor = transformers.Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    image_processor.save_pretrained(path)
    _write_processor_metadata(path)
    return path


def _write_processor_metadata(path: Path) -> None:
    """Make the folder look like a released checkpoint to ``AutoProcessor`` (with torchvision)."""
    (path / "chat_template.jinja").write_text(QWEN2_5_VL_CHAT_TEMPLATE, encoding="utf-8")
    preproc = path / "preprocessor_config.json"
    data = json.loads(preproc.read_text(encoding="utf-8"))
    data["processor_class"] = "Qwen2_5_VLProcessor"
    data["image_processor_type"] = "Qwen2VLImageProcessor"
    preproc.write_text(json.dumps(data, indent=2), encoding="utf-8")
    processor_config = {
        "processor_class": "Qwen2_5_VLProcessor",
        "video_processor": {
            "video_processor_type": "Qwen2VLVideoProcessor",
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "size": {"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
        },
    }
    (path / "processor_config.json").write_text(json.dumps(processor_config, indent=2), encoding="utf-8")
