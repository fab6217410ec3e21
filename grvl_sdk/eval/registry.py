"""The paper's benchmarks (spec section 5): name → task, modality, sample count and file names.

Names follow the GuardReasoner releases (``ToxicChat``, ``HarmBenchPrompt``...). The two sets scored
on both tasks have one entry per task: ``WildGuardTestPrompt`` / ``WildGuardTestResponse`` and
``SPA-VL-EvalPrompt`` / ``SPA-VL-EvalResponse``. ``XSTestResponseRefusal`` (refusal detection, in the
text GuardReasoner release) is registered for re-scoring text GuardReasoner outputs; it is not one of
the 14 and is kept out of the averages.

Lookups ignore case and punctuation and accept the GuardReasoner file stems (``0_3_harmbench_prompt``)
and the release's misspelt ``XSTestReponseHarmful``. A file called ``generated_predictions.jsonl`` (the
authors' layout ``{model}/{Benchmark}/generated_predictions.jsonl``) is named by its folder.

The two image sets of the VL release take their images from the ``GuardReasoner-VLTest`` image folder
by position (``vl_label``: HarmImageTest = the rows with ``label == 0``, SPA-VL-Eval = ``label == 1``);
SPA-VL-Eval's one file holds both tasks' labels (``shared_file``), so a file or folder of it expands
to both entries, and a run checks each of its samples once for both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from grvl_sdk.data.labels import TASK_LABELS, Task
from grvl_sdk.errors import EvalError

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Modality",
    "Task",
    "benchmarks_for_file",
    "expands_to_all",
    "file_key",
    "get_benchmark",
    "normalize_name",
    "paper_benchmarks",
]

Modality = Literal["text", "image", "text-image"]
#: Tasks averaged in the paper's table.
HARM_TASKS: tuple[Task, ...] = ("request", "response")
MODALITIES: tuple[Modality, ...] = ("text", "image", "text-image")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: what it scores (``task``), its input ``modality`` and its published size.

    ``column`` is its header in the paper-layout table; ``files`` are the file names it is shipped
    under; ``stems`` are extra names (normalised) a file of it may carry.
    """

    name: str
    task: Task
    modality: Modality
    size: int | None = None
    column: str = ""
    files: tuple[str, ...] = ()
    stems: tuple[str, ...] = ()
    #: One of the paper's 14 (request + response) evaluation sets.
    in_paper: bool = False
    registered: bool = field(default=True, compare=False)
    #: For the VL release's image sets: the ``label`` of this set's rows in the GuardReasoner-VLTest
    #: image folder (its images are taken from there by position, not from paths in the JSON).
    vl_label: int | None = None
    #: The released file holds this set's labels and those of its other-task twin (SPA-VL-Eval).
    shared_file: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASK_LABELS:
            raise EvalError(f"unknown task {self.task!r}; expected one of {sorted(TASK_LABELS)}")
        if self.modality not in MODALITIES:
            raise EvalError(f"unknown modality {self.modality!r}; expected one of {list(MODALITIES)}")
        if not self.column:
            object.__setattr__(self, "column", self.name)

    @property
    def positive_label(self) -> str:
        return TASK_LABELS[self.task][0]

    @property
    def labels(self) -> tuple[str, str]:
        return TASK_LABELS[self.task]

    def match_keys(self) -> frozenset[str]:
        """Normalised names a file or a lookup may use for this benchmark."""
        keys = {normalize_name(self.name), *(normalize_name(s) for s in self.stems)}
        keys.update(normalize_name(f) for f in self.files)
        return frozenset(keys)

    @classmethod
    def custom(cls, name: str, task: Task, modality: Modality = "text") -> Benchmark:
        """A benchmark that is not in the registry (your own data)."""
        return cls(name=name, task=task, modality=modality, registered=False)


def normalize_name(name: str) -> str:
    """Lower case, no extension, no GuardReasoner ``0_3_`` prefix, letters and digits only."""
    stem = re.sub(r"\.(jsonl?|json)$", "", name.strip(), flags=re.IGNORECASE)
    stem = re.sub(r"^\d_[0-9a-z]_", "", stem, flags=re.IGNORECASE)
    return re.sub(r"[^0-9a-z]", "", stem.lower())


def _b(
    name: str,
    task: Task,
    modality: Modality,
    size: int,
    column: str,
    files: tuple[str, ...] = (),
    stems: tuple[str, ...] = (),
    in_paper: bool = True,
    vl_label: int | None = None,
    shared_file: bool = False,
) -> Benchmark:
    return Benchmark(
        name, task, modality, size, column, files, stems, in_paper, vl_label=vl_label, shared_file=shared_file
    )


#: All registered benchmarks, in the paper's column order (request sets, then response sets).
BENCHMARKS: tuple[Benchmark, ...] = (
    # request (prompt) harm
    _b("ToxicChat", "request", "text", 2853, "ToxicChat", ("0_8_toxic_chat.json",)),
    _b("OpenAIModeration", "request", "text", 1680, "OpenAIModeration", ("0_2_OpenAIModeration.json",)),
    _b("AegisSafetyTest", "request", "text", 359, "AegisSafetyTest", ("0_1_AegisSafetyTest.json",)),
    _b("SimpleSafetyTests", "request", "text", 100, "SimpleSafetyTests", ("0_0_SimpleSafetyTests.json",)),
    _b("HarmBenchPrompt", "request", "text", 239, "HarmBench", ("0_3_harmbench_prompt.json",)),
    _b("WildGuardTestPrompt", "request", "text", 1756, "WildGuardTest", (), ("WildGuardTest", "WildGuardPrompt")),
    _b("HarmImageTest", "request", "image", 3295, "HarmImageTest", (), ("HarmImage",), vl_label=0),
    _b(
        "SPA-VL-EvalPrompt",
        "request",
        "text-image",
        3282,
        "SPA-VL-Eval",
        (),
        ("SPA-VL-Eval", "SPAVL"),
        vl_label=1,
        shared_file=True,
    ),
    # response harm
    _b("HarmBenchResponse", "response", "text", 602, "HarmBench", ("0_5_harmbench_response.json",)),
    _b("SafeRLHF", "response", "text", 2000, "SafeRLHF", ("0_9_safe_rlhf.json",)),
    _b("BeaverTails", "response", "text", 3021, "BeaverTails", ("0_A_beaver_tails.json",)),
    _b(
        "XSTestResponseHarmful",
        "response",
        "text",
        446,
        "XSTest",
        ("0_6_xstest_response_harmful.json",),
        ("XSTestReponseHarmful",),
    ),
    _b("WildGuardTestResponse", "response", "text", 1768, "WildGuardTest", (), ("WildGuardTest", "WildGuardResponse")),
    _b(
        "SPA-VL-EvalResponse",
        "response",
        "text-image",
        3282,
        "SPA-VL-Eval",
        (),
        ("SPA-VL-Eval", "SPAVL"),
        vl_label=1,
        shared_file=True,
    ),
    # refusal detection (text GuardReasoner only; not averaged)
    _b(
        "XSTestResponseRefusal",
        "refusal",
        "text",
        449,
        "XSTestRefusal",
        ("0_7_xstest_response_refusal.json",),
        (),
        in_paper=False,
    ),
)

_BY_NAME = {normalize_name(b.name): b for b in BENCHMARKS}


def paper_benchmarks(task: Task | None = None) -> list[Benchmark]:
    """The paper's 14 evaluation sets (optionally of one task), in table order."""
    return [b for b in BENCHMARKS if b.in_paper and (task is None or b.task == task)]


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark called ``name`` (case and punctuation ignored, aliases accepted)."""
    key = normalize_name(name)
    if key in _BY_NAME:
        return _BY_NAME[key]
    matches = [b for b in BENCHMARKS if key in b.match_keys()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(b.name for b in matches)
        raise EvalError(f"{name!r} is ambiguous: it names {names}; use one of those names")
    known = ", ".join(b.name for b in BENCHMARKS)
    raise EvalError(f"unknown benchmark {name!r}; registered: {known} (or give NAME:TASK=PATH for your own data)")


#: The authors' prediction files are all called this; their folder names the benchmark.
PREDICTIONS_FILE = "generated_predictions.jsonl"


def file_key(path: str | Path) -> str:
    """The normalised name a file is known by: its own name, or its folder's for ``generated_predictions.jsonl``."""
    path = Path(path)
    if normalize_name(path.name) == normalize_name(PREDICTIONS_FILE) and path.parent.name:
        return normalize_name(path.parent.name)
    return normalize_name(path.name)


def benchmarks_for_file(filename: str | Path) -> list[Benchmark]:
    """The registered benchmarks a file (by its name, see :func:`file_key`) may hold; several for a
    combined file."""
    key = file_key(filename)
    return [b for b in BENCHMARKS if key in b.match_keys()]


def expands_to_all(matches: list[Benchmark]) -> bool:
    """True when a file matching ``matches`` holds all of them (SPA-VL-Eval's two tasks)."""
    return len(matches) > 1 and all(b.shared_file for b in matches) and len({b.column for b in matches}) == 1
