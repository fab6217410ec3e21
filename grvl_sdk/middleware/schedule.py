"""When a streamed response is judged: the one check schedule every stream path uses.

A check of a stream judges the request with the whole response so far: its cost is one guard
generation (decode, ~fixed) plus the prefill of request + response so far. Re-judging at a fixed
interval makes the total grow with the square of the length (an 8,000-character stream checked every
400 characters costs 21 generations). This schedule bounds it:

- the first intermediate check once ``first`` characters have arrived (``Policy.stream_check_every``);
- each next one once the text has grown by ``max(first, (growth - 1) × length at the last check)``,
  i.e. at geometrically growing offsets (``growth=1``: a fixed interval of ``first`` characters);
- at most ``max_checks - 1`` intermediate checks, so with the final check (which always runs) a
  streamed choice costs at most ``max_checks`` generations (``None``: no cap; the count then grows
  with the logarithm of the length for ``growth > 1``).

With the defaults (``first=400, growth=4, max_checks=3``) a stream of any length costs at most 3
generations, and the prefill of the intermediate checks is at most ``growth/(growth-1)`` = 4/3 × that of
the final one, so the total guard work is at most 3× one final check.

**Leak window** (passthrough mode: text delivered before it is judged): before the first check at most
``first`` characters plus one chunk; after a check at length ``n``, at most ``max(first, (growth-1)·n)``
characters plus one chunk until the next; once the cap is spent, everything up to the end of the stream
(judged by the final check, which cuts the stream when it blocks). :meth:`CheckSchedule.leak_window`
returns that bound. In buffer mode nothing unjudged is delivered; the same figures say how much text is
held back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grvl_sdk.policy import Policy

__all__ = ["CheckSchedule"]


@dataclass
class CheckSchedule:
    """Which lengths of a streamed response get an intermediate check (see the module docstring).

    ``first``: characters (≥ 1) before the first check; ``growth`` (≥ 1): how fast the gaps grow;
    ``max_checks``: generations per streamed choice including the final check (≥ 1; ``None``: no cap).
    """

    first: int
    growth: float = 4.0
    max_checks: int | None = 3
    #: Intermediate checks made so far.
    checks: int = 0
    #: Characters received when the last check ran (0: none yet).
    checked: int = 0

    @classmethod
    def for_policy(cls, policy: Policy) -> CheckSchedule:
        """The schedule of a :class:`~grvl_sdk.policy.Policy` (``stream_check_every``,
        ``stream_check_growth``, ``stream_max_checks``)."""
        return cls(first=policy.stream_check_every, growth=policy.stream_check_growth,
                   max_checks=policy.stream_max_checks)  # fmt: skip

    def gap(self) -> int:
        """Characters after the last check (or the start) before the next check is due."""
        if self.checks == 0:
            return self.first
        return max(self.first, math.ceil((self.growth - 1) * self.checked))

    def next_offset(self) -> int | None:
        """The length at which the next intermediate check is due; ``None`` once the cap is spent."""
        if self.max_checks is not None and self.checks >= self.max_checks - 1:
            return None
        return self.checked + self.gap()

    def due(self, length: int) -> bool:
        """Whether a check is due now that ``length`` characters have arrived."""
        offset = self.next_offset()
        return offset is not None and length >= offset

    def mark(self, length: int) -> None:
        """Record an intermediate check of the first ``length`` characters."""
        self.checks += 1
        self.checked = length

    def leak_window(self) -> int | None:
        """Characters (excluding the one chunk that crosses the offset) that can arrive unjudged after the
        last check before the next one runs; ``None`` once the cap is spent (the rest is judged at the end)."""
        offset = self.next_offset()
        return None if offset is None else offset - self.checked
