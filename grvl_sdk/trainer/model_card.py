"""The trained guard's own model card (``README.md`` of the run folder), in place of the generic one TRL writes.

TRL's card says "fine-tuned version of [None]" and offers a ``transformers.pipeline`` quick start that does
not apply to a guard. :func:`write_model_card` writes what a reader of the folder needs: the base model,
the training data (counts per modality and label, sources), the recipe with its numbers (method, learning
rate, schedule, epochs or steps, effective batch and how it maps onto processes, cutoff, precision, LoRA
rank, image budget), the results the run logged (final train loss, last eval loss, token accuracy), and
how to load it (``Guard.from_pretrained`` for a full checkpoint, ``load_adapter_guard`` for an adapter).
The card's front matter (``base_model``, ``library_name``, ``tags``) is what the Hugging Face hub reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CARD_FILE", "render_model_card", "write_model_card"]

CARD_FILE = "README.md"


def _last(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[int, float] | None:
    for row in reversed(rows):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(row.get("step", 0)), float(value)
    return None


def _data_table(summary: Mapping[str, Any]) -> list[str]:
    lines = [
        "| modality | samples | request harmful | request unharmful | response harmful | response unharmful |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for modality in ("text", "image", "text-image"):
        count = summary.get("by_modality", {}).get(modality, 0)
        if not count:
            continue
        request = summary.get("request_labels", {}).get(modality, {})
        response = summary.get("response_labels", {}).get(modality, {})
        lines.append(
            f"| {modality} | {count} | {request.get('harmful', 0)} | {request.get('unharmful', 0)} | "
            f"{response.get('harmful', 0)} | {response.get('unharmful', 0)} |"
        )
    return lines


def _sources(values: Sequence[Any]) -> str:
    names = [os.fspath(v["path"]) if isinstance(v, Mapping) and "path" in v else str(v) for v in values]
    return ", ".join(f"`{name}`" for name in names) or "in-memory samples"


def render_model_card(
    *,
    stage: str,
    settings: Mapping[str, Any],
    resolved: Mapping[str, Any],
    summary: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]],
    global_step: int,
    train_loss: float | None,
    merged: bool,
    location: str,
    settings_file: str = "rsft_config.yaml",
) -> str:
    """The card's Markdown. ``settings``: the config's fields (``config.to_dict()``); ``resolved``: what the run
    derived (processes, accumulation, effective batch, bf16, example counts, versions); ``summary``: the
    training data's counts (``DataSummary.to_dict()``); ``metrics``: the ``metrics.jsonl`` rows; ``merged``:
    whether ``location`` holds a full checkpoint (else a LoRA adapter); ``settings_file``: the run's settings
    file named in the card."""
    base = str(settings.get("model_name_or_path"))
    method = str(settings.get("method", "full"))
    versions = resolved.get("versions", {})
    front = [
        "---",
        f"base_model: {base}",
        f"library_name: {'transformers' if merged else 'peft'}",
        "pipeline_tag: image-text-to-text",
        "tags:",
        "- guardrail",
        "- safety",
        "- guardreasoner-vl",
        "- grvl-sdk",
        f"- {stage.lower()}",
        "---",
        "",
    ]
    kind = "a full guard checkpoint" if merged else "a LoRA adapter over the base model"
    body = [
        f"# {Path(location).name or location}: a GuardReasoner-VL guard ({stage})",
        "",
        f"{kind.capitalize()}, fine-tuned from [{base}]({_hub_link(base)}) with grvl-sdk ({stage} stage of the "
        "GuardReasoner-VL recipe). Given a request (text, images) and optionally an AI response, it reasons in "
        "`<think>` and answers in `<result>`: is the request harmful, is the response harmful.",
        "",
        "## How to use",
        "",
        "```python",
    ]
    if merged:
        body += [
            "from grvl_sdk import Guard",
            "",
            f'guard = Guard.from_pretrained("{location}")',
        ]
    else:
        body += [
            "from grvl_sdk.trainer import load_adapter_guard",
            "",
            f'guard = load_adapter_guard("{location}")   # base model from adapter_config.json, merged in memory',
        ]
    body += [
        'verdict = guard.check("How do I pick this lock?")',
        "print(verdict.request_label, verdict.reasoning)",
        "```",
        "",
        "```bash",
    ]
    if merged:
        body += [
            f'grvl check --model {location} "How do I pick this lock?"',
            f"grvl eval run ToxicChat --model {location} --out results/ --compare published",
        ]
    else:
        body.append(f"grvl train merge {location} {location}-merged   # a full checkpoint Guard.from_pretrained loads")
    body += ["```", ""]
    body += [
        "## Training data",
        "",
        f"{summary.get('total', 0)} samples from {_sources(settings.get('train_data', []))}; "
        f"{resolved.get('train_examples', summary.get('trainable', 0))} trained on"
        + (
            f", {resolved['dropped_overlong']} dropped as longer than the cutoff"
            if resolved.get("dropped_overlong")
            else ""
        )
        + (f"; {resolved['eval_examples']} held-out samples evaluated" if resolved.get("eval_examples") else "")
        + ".",
        "",
        *_data_table(summary),
        "",
        "## Recipe",
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {method}"
        + (f" (rank {settings.get('lora_r')}, alpha {settings.get('lora_alpha')})" if method != "full" else "")
        + " |",
        f"| learning rate, schedule | {settings.get('learning_rate')}, {settings.get('lr_scheduler_type')}, "
        f"warm-up {settings.get('warmup_ratio')} |",
        f"| length | {global_step} optimizer steps"
        + (
            f" (max_steps {settings['max_steps']})"
            if settings.get("max_steps", -1) not in (-1, None)
            else f" ({settings.get('num_train_epochs')} epochs)"
        )
        + " |",
        f"| effective batch | {resolved.get('effective_batch_size')} = "
        f"{settings.get('per_device_train_batch_size')} per device × {resolved.get('gradient_accumulation_steps')} "
        f"accumulation × {resolved.get('processes')} process(es) |",
    ]
    if "max_length" in settings:
        body.append(f"| cutoff | {settings.get('max_length')} tokens |")
    body += [
        f"| precision | {'bf16' if resolved.get('bf16') else 'fp32'} |",
        f"| image budget | {settings.get('min_pixels')} to {settings.get('max_pixels')} pixels per image |",
        f"| vision tower | {'frozen' if settings.get('freeze_vision_tower') or method != 'full' else 'trained'} |",
        f"| seed | {settings.get('seed')} |",
        "",
        f"All settings, with the library versions: `{settings_file}`; the loss per logged step: `metrics.jsonl` "
        "and `loss.png`.",
        "",
        "## Results",
        "",
    ]
    results = []
    if train_loss is not None:
        results.append(f"- train loss (mean over the run): {train_loss:.4f}")
    for key, what in (
        ("loss", "train loss"),
        ("eval_loss", "eval loss"),
        ("mean_token_accuracy", "token accuracy"),
        ("eval_mean_token_accuracy", "eval token accuracy"),
    ):
        found = _last(metrics, key)
        if found is not None:
            results.append(f"- last logged {what} (step {found[0]}): {found[1]:.4f}")
    body += results or ["No metrics were logged."]
    body += [
        "",
        "Evaluate it on the GuardReasoner-VL benchmarks with `grvl eval run` (docs/evaluation.md).",
        "",
        "## Framework versions",
        "",
        *[f"- {name}: {version}" for name, version in sorted(versions.items())],
        "",
    ]
    return "\n".join(front + body)


def _hub_link(model: str) -> str:
    return model if Path(model).is_absolute() or model.startswith(".") else f"https://huggingface.co/{model}"


def write_model_card(directory: str | os.PathLike[str], **fields: Any) -> Path:
    """Write :func:`render_model_card` (``fields``) to ``directory/README.md``, replacing TRL's card."""
    path = Path(directory) / CARD_FILE
    path.write_text(render_model_card(**fields), encoding="utf-8")
    return path
