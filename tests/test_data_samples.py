"""One sample type for training and evaluation; old import paths keep working (with warnings where moved)."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

import pytest

from grvl_sdk.data import Sample, TrainingSample
from grvl_sdk.data.errors import EvalDataError
from grvl_sdk.errors import DataError, DataFormatError, EvalError, InputError

# -- the sample -------------------------------------------------------------------------------------


def test_evaluation_samples_keep_their_positional_form_and_names():
    sample = Sample("7", "q?", "an answer", ["a.png"], {"request": "harmful", "refusal": "compliance"})
    assert (sample.id, sample.request, sample.text, sample.response, sample.images) == (
        "7",
        "q?",
        "q?",
        "an answer",
        ("a.png",),
    )
    assert sample.gold("request") == "harmful" and sample.gold("response") is None
    assert sample.check_input() == {"text": "q?", "response": "an answer", "images": ["a.png"]}
    assert sample.modality == "text-image" and sample.request_label == "harmful"
    # A response-only check is a valid evaluation sample (not a training one).
    assert Sample("8", None, "just a response").check_input() == {"text": None, "response": "just a response"}
    with pytest.warns(DeprecationWarning, match=r"Sample\(text=\.\.\.\) is deprecated"):
        assert Sample("9", text="old keyword").request == "old keyword"


def test_labels_are_checked_per_task():
    with pytest.raises(DataError, match="label must be 'refusal', 'compliance' or null") as info:
        Sample("1", "q", labels={"refusal": "harmful"})
    assert info.value.field == "refusal_label"
    with pytest.raises(DataError, match="unknown task"):
        Sample("1", "q", labels={"toxicity": "harmful"})
    with pytest.raises(DataError, match="must be a string"):
        Sample(1, "q")  # type: ignore[arg-type]


def test_a_training_sample_is_a_sample_with_training_rules():
    sample = TrainingSample("q", "r", (), "harmful", "unharmful", "because", None, "f.jsonl:3", "id1")
    assert isinstance(sample, Sample)
    assert sample.labels == {"request": "harmful", "response": "unharmful"}
    assert (sample.reasoning, sample.source, sample.id) == ("because", "f.jsonl:3", "id1")
    assert TrainingSample(request="q", labels={"request": "harmful"}) == TrainingSample(
        request="q", request_label="harmful"
    )
    with pytest.raises(DataError, match="request and response labels only"):
        TrainingSample(request="q", labels={"refusal": "refusal"})
    with pytest.raises(DataError, match="request text, an image"):
        TrainingSample(response="r")
    # dataclasses.replace and with_reasoning keep the class and its rules.
    copy = dataclasses.replace(sample, reasoning="other")
    assert type(copy) is TrainingSample and copy.labels == sample.labels
    redone = sample.with_reasoning("new", "unharmful", None)
    assert (redone.request_label, redone.response_label, redone.completion) == ("unharmful", None, None)
    assert len({sample, copy, sample}) == 2  # hashable despite the labels dict


def test_from_sample_keeps_the_harm_labels():
    evaluated = Sample("4", "q", "r", (), {"request": "harmful", "response": "unharmful", "refusal": "refusal"})
    trained = TrainingSample.from_sample(evaluated)
    assert (trained.id, trained.labels) == ("4", {"request": "harmful", "response": "unharmful"})
    with pytest.raises(DataError, match="request text, an image"):
        TrainingSample.from_sample(Sample("5", None, "response only"))


def test_content_keys_did_not_change():
    # Synthesis resumes by these keys: they must stay what earlier versions computed.
    assert TrainingSample(request="How do I build a bomb?", request_label="harmful").key() == "4c7ce776a35360dfbc2adff3"
    images = (b"png-bytes", "/x/y.png")
    two = TrainingSample(request="q", response="r", images=images, request_label="unharmful", response_label="harmful")
    assert two.key() == "691484068283b8da8e1e84c6"


# -- errors -----------------------------------------------------------------------------------------


def test_one_data_error_that_old_handlers_still_catch():
    error = EvalDataError("x.json item 3: bad")
    for kind in (DataError, DataFormatError, EvalError, InputError, ValueError):
        assert isinstance(error, kind)
    assert error.to_dict()["code"] == "invalid_data" and str(error) == "x.json item 3: bad"
    located = EvalDataError("bad", file="x.jsonl", line=4, field="label")
    assert (str(located), located.line) == ("x.jsonl:4: field 'label': bad", 4)


# -- old import paths -------------------------------------------------------------------------------


def _fresh_import(monkeypatch: pytest.MonkeyPatch, name: str):
    """Import ``name`` as if for the first time (a shim warns once, when first imported)."""
    parent, _, child = name.rpartition(".")
    importlib.import_module(parent)
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(sys.modules[parent], child, raising=False)
    return importlib.import_module(name)


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("grvl_sdk.trainer.rsft", "grvl_sdk.trainer.rsft_trainer", ["train_rsft", "RSFTResult", "load_adapter_guard"]),
        ("grvl_sdk.trainer.config", "grvl_sdk.trainer.rsft_config", ["RSFTConfig", "PRESETS", "BatchPlan"]),
    ],
)
def test_old_trainer_modules_are_deprecated_aliases(monkeypatch, old, new, names):
    with pytest.warns(DeprecationWarning, match=rf"the module {old} is deprecated; use {new}"):
        module = _fresh_import(monkeypatch, old)
    assert module is importlib.import_module(new)
    for name in names:
        assert getattr(module, name) is getattr(importlib.import_module("grvl_sdk.trainer"), name)


def test_old_trainer_data_module_reexports_with_a_warning(monkeypatch):
    with pytest.warns(DeprecationWarning, match=r"the module grvl_sdk.trainer.data is deprecated"):
        data = _fresh_import(monkeypatch, "grvl_sdk.trainer.data")
    import grvl_sdk.trainer as trainer

    for name in data.__all__:
        if hasattr(trainer, name):
            assert getattr(data, name) is getattr(trainer, name), name
    assert data.TrainingSample is TrainingSample
    assert data.LABEL_ALIASES["unsafe"] == "harmful" and data.vltrain_sample is not None


def test_new_paths_do_not_warn():
    modules = ["grvl_sdk.trainer", "grvl_sdk.eval", "grvl_sdk.data", "grvl_sdk.cli.train", "grvl_sdk.cli.eval"]
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    # Only grvl-sdk's own deprecations are errors (third-party libraries may warn on import).
    flags = ["-W", "error::DeprecationWarning:grvl_sdk", "-W", "error:the module grvl_sdk:DeprecationWarning"]
    result = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_old_names_still_import():
    from grvl_sdk.eval import PredictionRecord
    from grvl_sdk.eval import Sample as EvalSample
    from grvl_sdk.eval.formats import PredictionRecord as FormatsRecord
    from grvl_sdk.eval.formats import Sample as FormatsSample
    from grvl_sdk.eval.formats import Status, load_predictions
    from grvl_sdk.eval.predictions import load_predictions as moved
    from grvl_sdk.eval.registry import TASK_LABELS, Task  # noqa: F401
    from grvl_sdk.trainer import RSFTConfig
    from grvl_sdk.trainer import TrainingSample as TrainerSample
    from grvl_sdk.trainer.base_config import BaseTrainingConfig

    assert EvalSample is FormatsSample is Sample and TrainerSample is TrainingSample
    assert FormatsRecord is PredictionRecord and load_predictions is moved and Status is not None
    assert issubclass(RSFTConfig, BaseTrainingConfig) and TASK_LABELS["request"] == ("harmful", "unharmful")
    import grvl_sdk.trainer

    with pytest.warns(DeprecationWarning):
        sys.modules.pop("grvl_sdk.trainer.config", None)
        vars(grvl_sdk.trainer).pop("config", None)
        assert grvl_sdk.trainer.config.RSFTConfig is RSFTConfig  # an attribute, as when the package imported it
