"""What a training run prints, and only that: our own lines, not third-party noise the user cannot act on.

- Deprecation warnings that libraries raise about each other (PEFT reading transformers'
  ``is_gradient_checkpointing``) are hidden around the calls that trigger them
  (:func:`library_deprecations_hidden`); the trainer arguments use transformers' current names
  (:func:`checkpointing_args`), so they raise none.
- CPU runs do not ask the data loader to pin memory (torch warns that no accelerator is found).
- The per-step dicts transformers prints when progress bars are off (its ``PrinterCallback``) follow
  ``progress``: metrics go to ``metrics.jsonl`` either way (:func:`drop_step_printer`).
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["checkpointing_args", "drop_step_printer", "library_deprecations_hidden", "pin_memory", "step_printer"]

#: FutureWarnings one library raises about another's use of a renamed transformers API (not the user's code).
_LIBRARY_DEPRECATIONS = (
    r"`is_gradient_checkpointing` is deprecated",
    r"`gradient_checkpointing(_kwargs)?` is deprecated",
)


@contextmanager
def library_deprecations_hidden() -> Iterator[None]:
    """Hide, inside the block, the FutureWarnings libraries raise about each other's renamed APIs."""
    with warnings.catch_warnings():
        for pattern in _LIBRARY_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
        yield


def checkpointing_args(args_class: type, enabled: bool) -> dict[str, Any]:
    """Gradient-checkpointing trainer arguments under the names ``args_class`` (a ``TrainingArguments``
    dataclass) takes: ``activation_checkpointing*`` on transformers ≥ 5.x that renamed them, else the old ones."""
    names = {f.name for f in dataclasses.fields(args_class)} if dataclasses.is_dataclass(args_class) else set()
    kwargs = {"use_reentrant": False} if enabled else None
    if "activation_checkpointing" in names:
        return {"activation_checkpointing": enabled, "activation_checkpointing_kwargs": kwargs}
    return {"gradient_checkpointing": enabled, "gradient_checkpointing_kwargs": kwargs}


def pin_memory(use_cpu: bool, torch: Any) -> bool:
    """Whether the data loader should pin memory: only when training runs on a GPU."""
    return bool(not use_cpu and torch.cuda.is_available())


def drop_step_printer(trainer: Any, progress: bool) -> None:
    """Without progress bars, transformers prints every logged dict to stdout (``PrinterCallback``): remove it
    unless ``progress`` (then its progress bar shows the logs). Pass :func:`step_printer` as a callback to see
    the steps anyway (the CLI's ``-v``)."""
    from transformers import PrinterCallback

    if not progress:
        trainer.remove_callback(PrinterCallback)


def step_printer() -> Any:
    """A ``TrainerCallback`` printing each logged step (``step N: loss …, learning_rate …``) to stderr."""
    import sys

    from transformers import TrainerCallback

    class StepPrinter(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if state.is_local_process_zero and logs:
                values = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items())
                print(f"step {state.global_step}: {values}", file=sys.stderr, flush=True)

    return StepPrinter()


def report(message: str, enabled: bool) -> None:
    """Print one of the run's own lines to stderr (flushed) when ``enabled`` (the main process)."""
    if enabled:
        print(message, file=sys.stderr, flush=True)
