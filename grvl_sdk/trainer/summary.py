"""A data set's counts: samples per modality, labels per modality, and what R-SFT can train on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from grvl_sdk.data.samples import Sample

__all__ = ["DataSummary", "summarize"]


@dataclass
class DataSummary:
    """Counts of a data set: samples per modality, labels per modality, and what can be trained on."""

    total: int = 0
    by_modality: dict[str, int] = field(default_factory=dict)
    request_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    response_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    with_response: int = 0
    with_reasoning: int = 0
    trainable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        modalities = [m for m in ("text", "image", "text-image") if self.by_modality.get(m)]
        rows = [f"{'modality':<11} {'samples':>8} {'req harm':>9} {'req safe':>9} {'req ?':>6} "
                f"{'resp harm':>10} {'resp safe':>10} {'resp ?':>7} {'no resp':>8}"]  # fmt: skip
        for modality in [*modalities, "all"]:
            req = self._counts(self.request_labels, modality)
            resp = self._counts(self.response_labels, modality)
            count = self.total if modality == "all" else self.by_modality.get(modality, 0)
            rows.append(
                f"{modality:<11} {count:>8} {req['harmful']:>9} {req['unharmful']:>9} {req['unknown']:>6} "
                f"{resp['harmful']:>10} {resp['unharmful']:>10} {resp['unknown']:>7} {resp['no response']:>8}"
            )
        rows.append(
            f"with a response: {self.with_response} · with reasoning: {self.with_reasoning} · "
            f"ready for R-SFT: {self.trainable}"
        )
        return "\n".join(rows)

    @staticmethod
    def _counts(table: dict[str, dict[str, int]], modality: str) -> Counter[str]:
        if modality == "all":
            total: Counter[str] = Counter()
            for counts in table.values():
                total.update(counts)
            return total
        return Counter(table.get(modality, {}))


def summarize(samples: Iterable[Sample]) -> DataSummary:
    """Count samples per modality and label (``unknown`` = not labelled, ``no response`` = none to judge)."""
    summary = DataSummary()
    by_modality: Counter[str] = Counter()
    request: dict[str, Counter[str]] = {}
    response: dict[str, Counter[str]] = {}
    for sample in samples:
        summary.total += 1
        modality = sample.modality
        by_modality[modality] += 1
        request.setdefault(modality, Counter())[sample.request_label or "unknown"] += 1
        if sample.response is None:
            response_key = "no response"
        else:
            response_key = sample.response_label or "unknown"
            summary.with_response += 1
        response.setdefault(modality, Counter())[response_key] += 1
        summary.with_reasoning += bool(sample.reasoning)
        summary.trainable += sample.has_target
    summary.by_modality = dict(by_modality)
    summary.request_labels = {k: dict(v) for k, v in request.items()}
    summary.response_labels = {k: dict(v) for k, v in response.items()}
    return summary
