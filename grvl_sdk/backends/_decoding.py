"""What runs beside ``model.generate`` in the local backend: the stopping criteria (the verdict block
closed, the deadline passed) and the capture of label log-probabilities for scores."""

from __future__ import annotations

import time
from typing import Any

from grvl_sdk._constants import RESULT_CLOSE
from grvl_sdk.protocol.parsing import verdict_end

__all__ = ["_LabelLogprobs", "_StopAtDeadline", "_StopOnVerdict"]


class _StopOnVerdict:
    """Stopping criterion: a sequence is done once it has closed its verdict block.

    That is the ``</result>`` closing the first ``<result>`` after the closed reasoning
    (:func:`grvl_sdk.parsing.verdict_end`); a ``</result>`` quoted inside the reasoning does not stop
    generation. Cheap per step: only when a token holding ``>`` ends a tail that contains
    ``</result>`` is the row's whole new text decoded and checked.
    """

    def __init__(self, tokenizer: Any, trigger_ids: frozenset[int], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.trigger_ids = trigger_ids
        self.prompt_width = prompt_width

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        last = input_ids[:, -1].tolist()
        done = [False] * len(last)
        for row, token in enumerate(last):
            if token in self.trigger_ids:
                start = max(self.prompt_width, input_ids.shape[1] - 16)
                tail = self.tokenizer.decode(input_ids[row, start:], skip_special_tokens=True)
                if RESULT_CLOSE in tail.lower():
                    text = self.tokenizer.decode(input_ids[row, self.prompt_width :], skip_special_tokens=True)
                    done[row] = verdict_end(text) is not None
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _StopAtDeadline:
    """Stopping criterion: every sequence is done once the deadline (``time.monotonic()``) has passed."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if time.monotonic() >= self.deadline:
            self.fired = True
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


class _LabelLogprobs:
    """Keeps the top-k log-probabilities of the output head's logits at the steps that may start a label.

    A forward hook on the output head sees each step's logits (before any logits processor: with greedy
    decoding they are the logits the token is chosen from); a stopping criterion that never stops looks
    at the last tokens and arms the hook for the next step when one of them can precede a label
    (``trigger_ids``). ``every_step`` keeps all steps (what a server returning logprobs does).
    """

    def __init__(self, k: int, trigger_ids: frozenset[int], *, every_step: bool = False) -> None:
        self.k = k
        self.trigger_ids = trigger_ids
        self.every_step = every_step
        self.armed = every_step
        self.step = 0
        self.kept: dict[int, tuple[Any, Any]] = {}

    def hook(self, module: Any, inputs: Any, output: Any) -> None:
        if self.armed:
            logits = output[:, -1, :].float()
            values, indices = logits.topk(min(self.k, logits.shape[-1]), dim=-1)
            self.kept[self.step] = (values - logits.logsumexp(dim=-1, keepdim=True), indices)
        self.step += 1

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if not self.every_step:
            self.armed = not self.trigger_ids.isdisjoint(input_ids[:, -1].tolist())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def rows(self) -> list[dict[int, tuple[list[float], list[int]]]]:
        """Per batch row: {step: (log-probabilities, token ids)}, on the CPU."""
        if not self.kept:
            return []
        steps = sorted(self.kept)
        import torch

        values = torch.stack([self.kept[s][0] for s in steps], 1).cpu().tolist()
        indices = torch.stack([self.kept[s][1] for s in steps], 1).cpu().tolist()
        return [
            {step: (row_values[j], row_indices[j]) for j, step in enumerate(steps)}
            for row_values, row_indices in zip(values, indices, strict=True)
        ]
