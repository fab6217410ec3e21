"""Random-weight Qwen2.5-VL models of real shapes, for benchmarks (no download).

The tokenizer and processor files are the tiny guard's (``grvl_sdk.testing.build_tiny_guard``): its ids
all fit the real vocabulary, so prompts, images and generation run through the real code paths.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from grvl_sdk.testing import build_tiny_guard

# Qwen2.5-VL-3B-Instruct's config.json (text and vision towers).
SHAPES = {
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


def build_model(shape: str, folder: Path, device: str) -> Path:
    """Random weights of ``shape`` saved with the tiny guard's tokenizer and processor files."""
    build_tiny_guard(folder)
    tiny = transformers.AutoConfig.from_pretrained(folder)
    spec = SHAPES[shape]
    ids = {
        k: getattr(tiny, k)
        for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    }
    text = {**tiny.text_config.to_dict(), **spec["text"]}
    vision = {**tiny.vision_config.to_dict(), **spec["vision"]}
    config = transformers.Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=spec["text"]["tie_word_embeddings"], **ids
    )
    with torch.device(device):
        model = transformers.Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return folder
