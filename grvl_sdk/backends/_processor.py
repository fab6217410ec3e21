"""Loading the guard's processor, with a torchvision-free fallback.

The stock ``Qwen2_5_VLProcessor`` has a video slot whose processor needs torchvision. With a CPU
torch build, PyPI's torchvision does not import, so ``AutoProcessor`` fails. The fallback keeps only
the tokenizer and the (PIL) image processor; it yields identical ``input_ids``, ``pixel_values`` and
``image_grid_thw`` for images and text, and TRL accepts it as a ``processing_class``.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from grvl_sdk._lazy import require

__all__ = ["load_processor"]

logger = logging.getLogger("grvl_sdk")


@cache
def _image_text_processor_class() -> type:
    transformers = require("transformers", extra="local")
    from transformers.processing_utils import ProcessorMixin

    base = transformers.Qwen2_5_VLProcessor

    class QwenVLImageTextProcessor(base):  # type: ignore[misc, valid-type]
        """``Qwen2_5_VLProcessor`` without the video slot (no torchvision needed)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
                self.image_token
            )
            self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
                self.video_token
            )
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

        @property
        def model_input_names(self) -> list[str]:
            names = list(self.tokenizer.model_input_names) + list(self.image_processor.model_input_names)
            return [*dict.fromkeys(names), "mm_token_type_ids"]

    return QwenVLImageTextProcessor


def load_processor(model_id: str, **hub_kwargs: Any) -> Any:
    """Load the model's processor; fall back to an image+text processor when torchvision is unusable."""
    transformers = require("transformers", extra="local")
    from transformers.utils import is_torchvision_available

    # Without torchvision AutoProcessor parses the tokenizer, then fails on the video slot: go straight
    # to the fallback so a 151k-token tokenizer is parsed once, not twice.
    if is_torchvision_available():
        try:
            return transformers.AutoProcessor.from_pretrained(model_id, **hub_kwargs)
        except (ImportError, RuntimeError, AttributeError) as exc:
            logger.info("AutoProcessor unavailable (%s); using the image+text processor without video support", exc)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_id, **hub_kwargs)
    image_processor = transformers.AutoImageProcessor.from_pretrained(model_id, **hub_kwargs)
    chat_template = getattr(tokenizer, "chat_template", None)
    cls = _image_text_processor_class()
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)
