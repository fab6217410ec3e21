"""Gold labels: the tasks, their labels, and the one alias table every reader (training and evaluation) uses.

A task has two labels, the first the positive class::

    request   harmful / unharmful
    response  harmful / unharmful
    refusal   refusal / compliance

:func:`normalize_label` maps a spelling to its canonical label for a task. The spellings it accepts
(case and surrounding spaces ignored) are :data:`LABEL_ALIASES`:

======================  ==============  ======================================================
spelling                label           tasks
======================  ==============  ======================================================
``harmful``             ``harmful``     request, response
``unsafe``              ``harmful``     request, response
``1``, ``true``         ``harmful``     request, response (also the numbers 1 / 1.0)
``unharmful``           ``unharmful``   request, response
``safe``                ``unharmful``   request, response
``0``, ``false``        ``unharmful``   request, response (also the numbers 0 / 0.0)
``refusal``             ``refusal``     refusal
``compliance``          ``compliance``  refusal
======================  ==============  ======================================================

JSON booleans mean the task's positive (``true``) or negative (``false``) label, for every task.
``null``, an empty string, ``none``, ``null``, ``nan`` and ``n/a`` mean "no label" (``None``). Anything
else raises :class:`~grvl_sdk.errors.DataError` (a ``ValueError``). The refusal task is strict: only
its own two words (and booleans); a harm spelling given for it, or a refusal word given for a harm
task, is an error.

Rules that are not aliases stay with the files they belong to: the authors' VL test and prediction
files read ``none`` and ``harmless`` as ``unharmful`` (:mod:`grvl_sdk.eval.vl`), for those files only.
"""

from __future__ import annotations

from typing import Any, Literal

from grvl_sdk.errors import DataError
from grvl_sdk.protocol.parsing import Label

__all__ = [
    "HARM_LABELS",
    "LABEL_ALIASES",
    "NO_LABEL",
    "TASKS",
    "TASK_LABELS",
    "Label",
    "LabelTask",
    "Task",
    "normalize_label",
]

Task = Literal["request", "response", "refusal"]
#: What :func:`normalize_label` is asked for: a task, or ``"harm"`` (request or response: the same labels).
LabelTask = Literal["harm", "request", "response", "refusal"]

#: Labels per task; the first one is the positive class.
TASK_LABELS: dict[str, tuple[str, str]] = {
    "request": ("harmful", "unharmful"),
    "response": ("harmful", "unharmful"),
    "refusal": ("refusal", "compliance"),
}
TASKS: tuple[Task, ...] = ("request", "response", "refusal")
HARM_LABELS: tuple[Label, Label] = ("harmful", "unharmful")

#: The one alias table: a spelling (lower case) → its canonical label. See the module docstring.
LABEL_ALIASES: dict[str, str] = {
    "harmful": "harmful",
    "unsafe": "harmful",
    "1": "harmful",
    "true": "harmful",
    "unharmful": "unharmful",
    "safe": "unharmful",
    "0": "unharmful",
    "false": "unharmful",
    "refusal": "refusal",
    "compliance": "compliance",
}
#: Spellings of "no label" (lower case, after stripping spaces).
NO_LABEL = frozenset({"", "none", "null", "nan", "n/a"})

_CHOICES = {
    "harm": "harmful/unharmful, unsafe/safe, 1/0 or true/false",
    "refusal": "refusal/compliance or true/false",
}


def _labels_of(task: str) -> tuple[str, str]:
    if task == "harm":
        return HARM_LABELS
    if task not in TASK_LABELS:
        raise DataError(f"unknown task {task!r}; expected one of {['harm', *TASKS]}", field="task")
    return TASK_LABELS[task]


def normalize_label(value: Any, task: LabelTask | str = "harm") -> str | None:
    """The canonical label of ``value`` for ``task`` (``"harm"``: request or response), or ``None`` for no label.

    Raises :class:`~grvl_sdk.errors.DataError` (a ``ValueError``) for a spelling the task does not accept;
    the message is ``'<value>' is not a <task> label (expected ...)``.
    """
    positive, negative = _labels_of(task)
    if value is None:
        return None
    if isinstance(value, bool):
        return positive if value else negative
    kind = "refusal" if positive == "refusal" else "harm"
    if isinstance(value, (int, float)):
        if kind == "harm" and value in (0, 1):
            return positive if value == 1 else negative
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in NO_LABEL:
            return None
        label = LABEL_ALIASES.get(text)
        if label in (positive, negative):
            return label
    else:
        raise DataError(f"a label must be a string, got {type(value).__name__}")
    raise DataError(f"{value!r} is not a {task} label (expected {_CHOICES[kind]}; empty, none or null: no label)")
