"""Saving and loading what training produces: processor files beside the weights, LoRA adapters merged or loaded.

A trained guard's folder must load exactly like its base with ``Guard.from_pretrained``: the tokenizer
plus the base model's processor files are copied next to the weights (:func:`save_processor`). A LoRA or
QLoRA adapter is merged into its unquantised base (:func:`merge_adapter`), or loaded over it as a
guard (:func:`load_adapter_guard`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from grvl_sdk._lazy import require
from grvl_sdk.errors import ModelLoadError
from grvl_sdk.trainer.console import library_deprecations_hidden

__all__ = [
    "ADAPTER_DIR",
    "PreloadedWeights",
    "load_adapter_guard",
    "merge_adapter",
    "save_processor",
    "save_trained_model",
]

logger = logging.getLogger("grvl_sdk")


class PreloadedWeights:
    """Mixin for a TRL trainer (listed before it) that can skip its own weight loading on resume.

    transformers' plain (non-DeepSpeed, non-FSDP) resume loads ``model.safetensors`` with a raw
    ``load_state_dict``; Qwen2.5-VL checkpoints are saved under their original key names, so nothing
    matches and training would silently restart from the base weights. Full fine-tuning therefore loads
    the checkpoint with ``from_pretrained`` (which maps the keys), sets ``weights_preloaded`` and skips
    that step.
    """

    weights_preloaded = False

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if self.weights_preloaded and model is None:
            logger.info("model weights already loaded from %s", resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]


#: Where a LoRA/QLoRA adapter is saved inside ``output_dir`` when it is also merged.
ADAPTER_DIR = "adapter"
# Processor-level files copied verbatim from the base model, so the trained guard loads exactly like it.
_PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "chat_template.jinja",
    "chat_template.json",
)


def save_processor(processor: Any, base: str, out: Path) -> None:
    """Tokenizer plus the base model's processor files, so ``Guard.from_pretrained(out)`` loads it like the base."""
    from grvl_sdk.backends._processor import _image_text_processor_class

    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.save_pretrained(str(out))
    if not isinstance(processor, _image_text_processor_class()):
        processor.save_pretrained(str(out))  # the stock processor saves itself faithfully
        return
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        image_processor.save_pretrained(str(out))
    from transformers.utils import cached_file

    for name in _PROCESSOR_FILES:
        try:
            found = cached_file(base, name, _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            found = None
        target = out / name
        if found:
            shutil.copyfile(found, target)
        elif name == "processor_config.json" and target.is_file():
            target.unlink()  # written for the torchvision-free class; the base had none
    chat_template = getattr(processor, "chat_template", None)
    if chat_template and not (out / "chat_template.jinja").is_file() and not (out / "chat_template.json").is_file():
        (out / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


def merge_adapter(
    adapter_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    base_model: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Merge a LoRA/QLoRA adapter into its (unquantised) base and save a full guard checkpoint.

    ``base_model`` defaults to the adapter's ``base_model_name_or_path``; ``dtype`` (``"bfloat16"``,
    ``"float32"``...) to the base's own. Returns ``output_dir``.
    """
    torch = require("torch", extra="train")
    transformers = require("transformers", extra="train")
    peft = require("peft", extra="train")
    from grvl_sdk.backends._processor import load_processor

    adapter_dir = Path(adapter_dir)
    base = _adapter_base(adapter_dir, base_model)
    kwargs: dict[str, Any] = {}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype.replace("bf16", "bfloat16").replace("fp32", "float32"))
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load base model {base!r} to merge the adapter into: {exc}") from exc
    with library_deprecations_hidden():
        model = peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor_source = str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base
    save_processor(load_processor(processor_source), base, out)
    return out


def save_trained_model(trainer: Any, config: Any, processor: Any, out: Path, *, state: Any, bf16: bool) -> bool:
    """Save what a training stage produced in ``out``; returns ``True`` for a full guard checkpoint.

    Full fine-tuning saves the weights and the processor files. LoRA/QLoRA saves the adapter (in
    ``out/adapter`` with ``config.merge_lora``, then merged into the unquantised base in ``out``; in ``out``
    itself otherwise). Every process must call it (``state`` is accelerate's ``PartialState``); only the
    main process writes the processor and merges. The trainer's model is released before merging.
    """
    torch = require("torch", extra="train")
    main = state.is_main_process
    if config.method == "full":
        trainer.save_model(str(out))
        if main:
            save_processor(processor, config.model_name_or_path, out)
        state.wait_for_everyone()
        return True
    adapter_dir = out / ADAPTER_DIR if config.merge_lora else out
    trainer.save_model(str(adapter_dir))
    state.wait_for_everyone()
    if main:
        save_processor(processor, config.model_name_or_path, adapter_dir)
        if config.merge_lora:
            trainer.model = None
            trainer.model_wrapped = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            merge_adapter(
                adapter_dir, out, base_model=config.model_name_or_path, dtype="bfloat16" if bf16 else "float32"
            )
    state.wait_for_everyone()
    return bool(config.merge_lora)


def _adapter_base(adapter_dir: Path, base_model: str | None = None) -> str:
    """``base_model``, else the adapter's ``base_model_name_or_path``, once ``adapter_dir`` is checked to hold an
    adapter (:class:`ModelLoadError` saying what it holds otherwise)."""
    config_path = adapter_dir / "adapter_config.json"
    if not adapter_dir.is_dir():
        raise ModelLoadError(f"adapter folder {str(adapter_dir)!r} does not exist", model=str(adapter_dir))
    if not config_path.is_file() and (adapter_dir / "config.json").is_file():
        kept = adapter_dir / ADAPTER_DIR
        also = (
            f"; the LoRA adapter it was merged from is in {str(kept)!r} (load_adapter_guard({str(kept)!r}))"
            if (kept / "adapter_config.json").is_file()
            else ""
        )
        raise ModelLoadError(
            f"{str(adapter_dir)!r} holds a full guard checkpoint, not a LoRA adapter: load it as a guard, "
            f"Guard.from_pretrained({str(adapter_dir)!r}) in Python or --model {adapter_dir} on the command "
            f"line{also}",
            model=str(adapter_dir),
        )
    if not config_path.is_file():
        raise ModelLoadError(f"{adapter_dir} holds no adapter_config.json: not a LoRA adapter", model=str(adapter_dir))
    if base_model:
        return base_model
    base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{config_path} names no base_model_name_or_path; pass base_model=")
    return str(base)


def load_adapter_guard(
    adapter_dir: str | os.PathLike[str],
    *,
    base_model: str | None = None,
    merge: bool = True,
    quantization: str | None = None,
    device: str | None = None,
    dtype: Any = None,
    **guard_kwargs: Any,
) -> Any:
    """A :class:`~grvl_sdk.Guard` over a base model plus a LoRA adapter (``merge_lora=False`` runs).

    The adapter is merged in memory (``merge=True``; not possible over a quantised base, where it stays
    a PEFT model). ``guard_kwargs`` go to ``Guard`` (policy, max_new_tokens...). Raises
    :class:`~grvl_sdk.errors.ModelLoadError` when ``adapter_dir`` is not an adapter, naming what to do instead
    (a merged run folder: ``Guard.from_pretrained``, or its ``adapter/`` sub-folder).
    """
    peft = require("peft", extra="train")
    from grvl_sdk.backends._processor import load_processor
    from grvl_sdk.backends.local import LocalBackend
    from grvl_sdk.guard import Guard

    adapter_dir = Path(adapter_dir)
    base = _adapter_base(adapter_dir, base_model)
    backend = LocalBackend.from_pretrained(base, quantization=quantization, device=device, dtype=dtype)  # type: ignore[arg-type]
    with library_deprecations_hidden():  # PEFT reads a renamed transformers property
        model = peft.PeftModel.from_pretrained(backend.model, str(adapter_dir))
    if merge and quantization is None:
        model = model.merge_and_unload()
    model.eval()
    processor_source = str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base
    pixels: dict[str, Any] = {"min_pixels": backend.encoder.min_pixels, "max_pixels": backend.encoder.max_pixels}
    local = LocalBackend(model, load_processor(processor_source), model_id=str(adapter_dir), **pixels)
    return Guard(local, **guard_kwargs)
