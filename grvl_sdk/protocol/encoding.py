"""Injection-proof prompt encoding for local models.

The chat template is rendered once per input *shape* (text or not, response or not, image count) with
private-use placeholders where the user's request and response go. The rendered skeleton is split at
the tokenizer's added tokens: those splits are the only special tokens in the prompt. User text is
substituted into the text runs, and every text run is tokenised with special tokens split, so a
user's ``<|im_end|>`` or ``<|image_pad|>`` becomes ordinary text tokens and a literal ``<image>``
stays text. Text is encoded by a **private copy** of the fast tokenizer whose ``encode_special_tokens``
is set once and never changed: transformers implements ``split_special_tokens=True`` by flipping that
flag on the shared tokenizer for the duration of a call, so another thread using
``backend.tokenizer`` at the same time could otherwise turn a user's ``<|im_end|>`` into the real
special token. Each ``<|image_pad|>`` of the skeleton is expanded to the number of vision
tokens of the matching image. For inputs without injected markers this gives exactly the ids the
stock processor gives for the rendered prompt string.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grvl_sdk._constants import MAX_IMAGES_PER_CHECK
from grvl_sdk.errors import InputError, ModelLoadError
from grvl_sdk.images import resize_to_grid
from grvl_sdk.protocol.prompt import build_messages
from grvl_sdk.types import GuardInput

__all__ = ["EncodedBatch", "PromptEncoder"]

_REQUEST_SLOT = "\ue000grvl-request\ue001"
_RESPONSE_SLOT = "\ue000grvl-response\ue001"
_IMAGE_PAD = "<|image_pad|>"
_SLOTS = re.compile(f"{re.escape(_REQUEST_SLOT)}|{re.escape(_RESPONSE_SLOT)}")


@dataclass(frozen=True)
class _Piece:
    special_id: int | None  # an added token, or None for a text run
    text: str
    has_slot: bool


@dataclass
class EncodedBatch:
    """Model inputs for a batch, left-padded."""

    input_ids: Any
    attention_mask: Any
    mm_token_type_ids: Any
    pixel_values: Any | None
    image_grid_thw: Any | None
    prompt_lengths: list[int]


class PromptEncoder:
    """Renders and tokenises guard prompts for one tokenizer/image-processor pair."""

    def __init__(self, processor: Any, *, min_pixels: int, max_pixels: int) -> None:
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_processor = getattr(processor, "image_processor", None)
        self.chat_template = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if not self.chat_template:
            raise ModelLoadError("the checkpoint has no chat template (chat_template.jinja or tokenizer_config.json)")
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        added = sorted(self.tokenizer.get_added_vocab(), key=len, reverse=True)
        self._added_ids = {tok: self.tokenizer.convert_tokens_to_ids(tok) for tok in added}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in added) + ")") if added else None
        self.image_token_id = self._added_ids.get(_IMAGE_PAD)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        self._skeletons: dict[tuple[bool, bool, int], tuple[str, tuple[_Piece, ...]]] = {}
        self._text_ids: dict[str, list[int]] = {}
        self.merge_size = int(getattr(self.image_processor, "merge_size", 2) or 2)
        self._private = _private_tokenizer(self.tokenizer)

    # -- rendering -------------------------------------------------------------------------
    def _skeleton(self, item: GuardInput) -> tuple[str, tuple[_Piece, ...]]:
        key = (bool(item.text), item.response is not None, len(item.images))
        cached = self._skeletons.get(key)
        if cached is not None:
            return cached
        messages = build_messages(
            _REQUEST_SLOT if item.text else None,
            _RESPONSE_SLOT if item.response is not None else None,
            num_images=len(item.images),
        )
        rendered = self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )
        pieces: list[_Piece] = []
        parts = self._split.split(rendered) if self._split else [rendered]
        for index, part in enumerate(parts):
            if not part:
                continue
            if index % 2 == 1:
                pieces.append(_Piece(self._added_ids[part], part, False))
            else:
                pieces.append(_Piece(None, part, _REQUEST_SLOT in part or _RESPONSE_SLOT in part))
        slots = sum(p.text.count(_IMAGE_PAD) for p in pieces if p.special_id is not None)
        if slots != len(item.images):
            raise ModelLoadError(
                f"the chat template wrote {slots} image slots for {len(item.images)} images; "
                "it is not a Qwen2.5-VL-style template"
            )
        self._skeletons[key] = (rendered, tuple(pieces))
        return self._skeletons[key]

    @staticmethod
    def _fill(text: str, item: GuardInput) -> str:
        # One pass, so a slot marker inside user text is never substituted.
        return _SLOTS.sub(lambda m: (item.text if m.group(0) == _REQUEST_SLOT else item.response) or "", text)

    def format_prompt(self, item: GuardInput) -> str:
        """The prompt string (user text verbatim; image blocks not expanded)."""
        _check_images(item)
        rendered, _ = self._skeleton(item)
        return self._fill(rendered, item)

    # -- tokenising ------------------------------------------------------------------------
    def _encode_text(self, text: str) -> list[int]:
        """Token ids of user or template text, special-token spellings kept as text (thread-safe)."""
        return self._private.encode(text, add_special_tokens=False).ids

    def token_ids(self, item: GuardInput, image_token_counts: Sequence[int]) -> list[int]:
        """Token ids of one prompt, with each image slot expanded to its vision token count."""
        _, pieces = self._skeleton(item)
        ids: list[int] = []
        images = iter(image_token_counts)
        for piece in pieces:
            if piece.special_id is not None:
                if piece.text == _IMAGE_PAD:
                    ids.extend([piece.special_id] * next(images))
                else:
                    ids.append(piece.special_id)
            elif piece.has_slot:
                ids.extend(self._encode_text(self._fill(piece.text, item)))
            else:
                cached = self._text_ids.get(piece.text)
                if cached is None:
                    cached = self._text_ids[piece.text] = self._encode_text(piece.text)
                ids.extend(cached)
        return ids

    def encode_batch(self, items: Sequence[GuardInput], *, device: Any, pixel_dtype: Any) -> EncodedBatch:
        """Tokenise and pad a batch (left padding) and preprocess all its images at once."""
        import torch

        for item in items:
            _check_images(item)
        all_images = [image for item in items for image in item.images]
        pixel_values = grid = None
        counts: list[int] = []
        if all_images:
            if self.image_processor is None:
                raise InputError("this model's processor has no image processor; it cannot take images")
            # The one resize to the grid (a no-op for images a Guard already prepared).
            all_images = [
                resize_to_grid(image, min_pixels=self.min_pixels, max_pixels=self.max_pixels) for image in all_images
            ]
            processed = self.image_processor(
                images=all_images,
                size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
                return_tensors="pt",
            )
            pixel_values = processed["pixel_values"].to(device=device, dtype=pixel_dtype)
            grid = processed["image_grid_thw"]
            counts = (grid.prod(-1) // (self.merge_size**2)).tolist()
            grid = grid.to(device)
        sequences: list[list[int]] = []
        offset = 0
        for item in items:
            n = len(item.images)
            sequences.append(self.token_ids(item, counts[offset : offset + n]))
            offset += n
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            attention[row, width - len(seq) :] = 1
        mm_types = (input_ids == self.image_token_id).long() if self.image_token_id is not None else None
        return EncodedBatch(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            mm_token_type_ids=mm_types.to(device) if mm_types is not None else None,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            prompt_lengths=[len(s) for s in sequences],
        )


def _private_tokenizer(tokenizer: Any) -> Any:
    """A copy of the fast tokenizer's backend that always splits special tokens, shared with nobody."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelLoadError(
            f"the checkpoint's tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; "
            "grvl-sdk needs one (tokenizer.json) to encode user text injection-proof"
        )
    from tokenizers import Tokenizer

    # A new Tokenizer over the same (read-only, thread-safe) model and pipeline objects: no copy of a
    # 151k vocabulary (serialising and re-parsing it cost 0.7-3 s per load). Added tokens are re-added in
    # id order, which gives them the same ids; where it does not, fall back to a full copy.
    added = sorted(backend.get_added_tokens_decoder().items())
    private = Tokenizer(backend.model)
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        value = getattr(backend, part)
        if value is not None:
            setattr(private, part, value)
    private.add_tokens([token for _, token in added])  # each AddedToken keeps its flags (special, ...)
    if any(private.token_to_id(token.content) != index for index, token in added):
        private = Tokenizer.from_str(backend.to_str())
    private.encode_special_tokens = True
    private.no_padding()
    private.no_truncation()
    return private


def _check_images(item: GuardInput) -> None:
    if len(item.images) > MAX_IMAGES_PER_CHECK:
        raise InputError(
            f"{len(item.images)} images in one check; at most {MAX_IMAGES_PER_CHECK} are supported", field="images"
        )
