"""The one sample type of training and evaluation: :class:`Sample`, and its training form :class:`TrainingSample`.

A sample is what the guard judges (a request text, images, an optional AI response) with its gold
labels per task (``{"request": "harmful", "response": "unharmful"}``; a task without a label is left
out), an ``id``, where it came from (``source``, ``file:line``) and, for training, the reasoning or
the whole assistant turn (``completion``).

Evaluation reads benchmark files into :class:`Sample`; it may lack a request (a response-only check)
and carry any task's labels. :class:`TrainingSample` is a ``Sample`` that can be trained on: it needs
a request text or an image, carries harm labels only, and a response label needs a response.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from PIL import Image

from grvl_sdk._deprecation import warn_deprecated
from grvl_sdk.data.labels import TASK_LABELS, Label, Task
from grvl_sdk.errors import DataError
from grvl_sdk.protocol.prompt import build_transcript

__all__ = ["Modality", "Sample", "TrainingSample", "render_completion"]

Modality = Literal["text", "image", "text-image"]

_NO_RESPONSE = "None"
_TEXT_FIELDS = ("request", "response", "reasoning", "completion", "source", "id")
_UNSET: Any = object()


def render_completion(reasoning: str, request_label: Label, response_label: Label | None) -> str:
    """The canonical assistant turn: ``<think>\\n…\\n</think>\\n<result>\\nRequest: …\\nResponse: …\\n</result>``."""
    return (
        f"<think>\n{reasoning.strip()}\n</think>\n"
        f"<result>\nRequest: {request_label}\nResponse: {response_label or _NO_RESPONSE}\n</result>"
    )


def _image_fingerprint(image: Any) -> bytes:
    if isinstance(image, (str, os.PathLike)):
        return b"path:" + os.fsencode(os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return b"bytes:" + hashlib.sha256(bytes(image)).digest()
    if isinstance(image, Image.Image):
        return b"pil:" + hashlib.sha256(image.tobytes()).digest() + repr(image.size).encode()
    return b"other:" + repr(image).encode()


@dataclass(frozen=True, init=False)
class Sample:
    """One sample: the guard's input, gold labels per task, and where it came from.

    ``Sample(id, request, response, images, labels, *, source, reasoning, completion)``; every field is
    optional. ``images`` are anything :func:`grvl_sdk.images.load_image` takes (evaluation keeps paths).
    ``labels`` maps a task (``request``, ``response``, ``refusal``) to its canonical label (see
    :mod:`grvl_sdk.data.labels`). ``text`` is another name of ``request`` (the ``Guard.check`` argument).
    """

    id: str | None
    request: str | None
    response: str | None
    images: tuple[Any, ...]
    labels: Mapping[Task, str]
    source: str | None
    reasoning: str | None
    completion: str | None

    def __init__(
        self,
        id: str | None = None,
        request: str | None = None,
        response: str | None = None,
        images: Any = (),
        labels: Mapping[str, str] | None = None,
        *,
        source: str | None = None,
        reasoning: str | None = None,
        completion: str | None = None,
        text: Any = _UNSET,
    ) -> None:
        if text is not _UNSET:
            warn_deprecated("Sample(text=...)", "Sample(request=...)")
            if request is not None:
                raise DataError("give request or text, not both", field="request")
            request = text
        values = {
            "id": id,
            "request": request,
            "response": response,
            "images": images if isinstance(images, tuple) else tuple(images),
            "labels": dict(labels or {}),
            "source": source,
            "reasoning": reasoning,
            "completion": completion,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self._validate()

    def _validate(self) -> None:
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise DataError(f"must be a string or null, got {type(value).__name__}", field=name)
        for task, value in self.labels.items():
            if task not in TASK_LABELS:
                raise DataError(f"unknown task {task!r}; expected one of {sorted(TASK_LABELS)}", field="labels")
            positive, negative = TASK_LABELS[task]
            if value not in (positive, negative):
                message = f"label must be {positive!r}, {negative!r} or null, got {value!r}"
                raise DataError(message, field=f"{task}_label")

    def __hash__(self) -> int:
        return hash((type(self), self.id, self.request, self.response, self.images, tuple(sorted(self.labels.items()))))

    # -- reading ---------------------------------------------------------------------------------
    @property
    def text(self) -> str | None:
        """The request text (the name ``Guard.check`` and evaluation use)."""
        return self.request

    @property
    def request_label(self) -> Label | None:
        return self.labels.get("request")  # type: ignore[return-value]

    @property
    def response_label(self) -> Label | None:
        return self.labels.get("response")  # type: ignore[return-value]

    def gold(self, task: Task | str) -> str | None:
        """The gold label for ``task``, or ``None``."""
        return self.labels.get(task)  # type: ignore[call-overload,arg-type]

    @property
    def modality(self) -> Modality:
        """``"text"``, ``"image"`` (images and no request text) or ``"text-image"``."""
        if not self.images:
            return "text"
        return "text-image" if self.request else "image"

    def check_input(self) -> dict[str, Any]:
        """Keyword arguments for ``Guard.check`` / one item of ``Guard.check_batch``."""
        spec: dict[str, Any] = {"text": self.request, "response": self.response}
        if self.images:
            spec["images"] = list(self.images)
        return spec

    def transcript(self) -> str:
        """The user message of the training record (``Human user:\\n<image>…``)."""
        return build_transcript(self.request, self.response, num_images=len(self.images))

    def key(self) -> str:
        """A stable identity: ``id`` when given, else a hash of the content (text, images, harm labels)."""
        if self.id:
            return self.id
        digest = hashlib.sha256()
        for part in (self.request, self.response, self.request_label, self.response_label):
            digest.update(repr(part).encode("utf-8"))
        for image in self.images:
            digest.update(_image_fingerprint(image))
        return digest.hexdigest()[:24]

    # -- training targets ------------------------------------------------------------------------
    @property
    def _response_known(self) -> bool:
        return self.response is None or self.response_label is not None

    @property
    def has_target(self) -> bool:
        """Whether :meth:`target` can build the assistant turn (R-SFT needs it)."""
        if self.completion is not None:
            return True
        return bool(self.reasoning) and self.request_label is not None and self._response_known

    def target(self) -> str:
        """The assistant turn to train on: ``completion`` verbatim, else rendered by :func:`render_completion`."""
        if self.completion is not None:
            return self.completion
        if not self.reasoning:
            raise DataError("no reasoning: run `grvl train synthesize` to add it", field="reasoning")
        if self.request_label is None:
            raise DataError("no request label to train on", field="request_label")
        if not self._response_known:
            raise DataError("the response has no label to train on", field="response_label")
        return render_completion(self.reasoning, self.request_label, self.response_label)


class TrainingSample(Sample):
    """A sample to train on.

    ``TrainingSample(request, response, images, request_label, response_label, reasoning, completion,
    source, id)``. ``response_label`` is ``None`` when there is no response, or when a response is
    given but not labelled. ``reasoning`` is the text inside ``<think>``; ``completion`` is the
    assistant turn verbatim when a record carried one (otherwise it is rendered from reasoning and
    labels, see :meth:`target`). ``source`` says where the sample came from (``file:line``).
    """

    def __init__(
        self,
        request: str | None = None,
        response: str | None = None,
        images: Any = (),
        request_label: Label | None = None,
        response_label: Label | None = None,
        reasoning: str | None = None,
        completion: str | None = None,
        source: str | None = None,
        id: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        merged = dict(labels or {})
        for task, value in (("request", request_label), ("response", response_label)):
            if value is not None:
                merged[task] = value
        super().__init__(
            id, request, response, images, merged, source=source, reasoning=reasoning, completion=completion
        )

    def _validate(self) -> None:
        super()._validate()
        if not self.request and not self.images:
            raise DataError("a sample needs a request text, an image, or both", field="request")
        extra = sorted(set(self.labels) - {"request", "response"})
        if extra:
            raise DataError(f"a training sample has request and response labels only, got {extra}", field="labels")
        if self.response is None and self.response_label is not None:
            raise DataError("a response label was given but there is no response", field="response_label")

    @classmethod
    def from_sample(cls, sample: Sample) -> TrainingSample:
        """The training form of any sample (its harm labels; other tasks' labels are dropped)."""
        labels = {task: label for task, label in sample.labels.items() if task in ("request", "response")}
        return cls(
            sample.request,
            sample.response,
            sample.images,
            reasoning=sample.reasoning,
            completion=sample.completion,
            source=sample.source,
            id=sample.id,
            labels=labels,  # type: ignore[arg-type]
        )

    def with_reasoning(self, reasoning: str, request_label: Label, response_label: Label | None) -> TrainingSample:
        """A copy with reasoning and labels set and any verbatim completion dropped."""
        labels = {"request": request_label, **({"response": response_label} if response_label else {})}
        return replace(self, reasoning=reasoning, labels=labels, completion=None)  # type: ignore[arg-type]
