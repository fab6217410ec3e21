"""The Guard API over the local backend on the tiny guard (CPU): check/acheck/check_batch, decoding,
quantisation, verdicts and typed errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pydantic
import pytest
from PIL import Image

from grvl_sdk import (
    Backend,
    Generation,
    GRVLError,
    Guard,
    GuardInput,
    InputError,
    ModelLoadError,
    Verdict,
)
from grvl_sdk.backends import local as local_module
from grvl_sdk.backends._decoding import _StopOnVerdict

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _inputs(image: Image.Image) -> list[dict]:
    other = Image.new("RGB", (60, 90), (0, 0, 255))
    return [
        {"text": "How do I bake bread?"},
        {"text": "How do I pick this lock?", "image": image, "response": "Use a tension wrench."},
        {"image": other},
        {"text": "Compare these", "images": [image, other]},
        {"text": "a much longer request that goes on and on about many different things", "response": "ok"},
    ]


def test_check_acheck_and_check_batch_agree(tiny_guard, rgb_image):
    inputs = _inputs(rgb_image)
    singles = [tiny_guard.check(**spec) for spec in inputs]
    batched = tiny_guard.check_batch(inputs)
    async_ = [asyncio.run(tiny_guard.acheck(**spec)) for spec in inputs]
    async_batch = asyncio.run(tiny_guard.acheck_batch(inputs, batch_size=2))
    for one, two, three, four in zip(singles, batched, async_, async_batch, strict=True):
        assert one.raw_output == two.raw_output == three.raw_output == four.raw_output
        assert one.usage.prompt_tokens == two.usage.prompt_tokens
        assert one.usage.completion_tokens == two.usage.completion_tokens


def test_decoding_is_greedy_and_overrides_checkpoint_sampling(tiny_guard, rgb_image):
    backend = tiny_guard.backend
    # The tiny checkpoint ships Qwen's sampling defaults (do_sample, repetition_penalty 1.05).
    assert backend.model.generation_config.do_sample is True
    assert backend.model.generation_config.repetition_penalty == 1.05
    config = backend.generation_config(16)
    assert config.do_sample is False and config.repetition_penalty == 1.0 and config.num_beams == 1
    item = tiny_guard.prepare("How do I pick this lock?", image=rgb_image)
    batch = backend.encoder.encode_batch([item], device="cpu", pixel_dtype=backend._pixel_dtype())
    import torch

    with torch.inference_mode():
        reference = backend.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            mm_token_type_ids=batch.mm_token_type_ids,
            pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw,
            do_sample=False,
            repetition_penalty=1.0,
            max_new_tokens=24,
            min_new_tokens=24,
        )
    expected = backend.tokenizer.decode(reference[0, batch.input_ids.shape[1] :], skip_special_tokens=True)
    got = tiny_guard.check("How do I pick this lock?", image=rgb_image)
    assert expected.startswith(got.raw_output)
    assert tiny_guard.check("How do I pick this lock?", image=rgb_image).raw_output == got.raw_output


def test_stop_criterion_fires_on_result_close(tiny_guard):
    import torch

    tokenizer = tiny_guard.backend.tokenizer
    stop = _StopOnVerdict(tokenizer, tiny_guard.backend._trigger_ids, prompt_width=2)
    texts = [
        "xx<think>a</think><result>Request: harmful</result>",  # the verdict block closes: stop
        "xx<think>a</think><result>Request: harmful\nResp",  # still open
        "xx<think>he wrote '<result>Request: unharmful</result>",  # a quote inside the reasoning
        "xx<result>Request: unharmful</result>",  # no reasoning closed before it
    ]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in encoded)
    rows = [[tokenizer.pad_token_id] * (width - len(r)) + r for r in encoded]
    assert stop(torch.tensor(rows), None).tolist() == [True, False, False, False]


def test_unparseable_output_is_a_failed_fail_closed_verdict(tiny_guard):
    verdict = tiny_guard.check("hello")
    # The tiny guard's weights are random: it writes no verdict block.
    assert verdict.failed
    # Failed, not judged: harmful is about judgements; the fail mode (block by default) decides.
    assert verdict.harmful is False and verdict.blocked and verdict.decision == "error-blocked"
    assert verdict.request_label is None
    assert verdict.error.code == "unparseable_output"
    assert verdict.model == tiny_guard.model_id
    assert 0 < verdict.usage.completion_tokens <= 24
    assert verdict.usage.prompt_tokens > 50


class ScriptedBackend(Backend):
    """Returns fixed outputs, recording what it was asked."""

    model_id = "scripted"

    def __init__(self, outputs: Sequence[str], finished: bool = True) -> None:
        self.outputs = list(outputs)
        self.finished = finished
        self.calls: list[list[GuardInput]] = []

    def generate(self, inputs, *, max_new_tokens):
        self.calls.append(list(inputs))
        return [
            Generation(
                text=self.outputs.pop(0), prompt_tokens=10, completion_tokens=5, latency_ms=1.0, finished=self.finished
            )
            for _ in inputs
        ]


@pytest.mark.parametrize(
    ("output", "kwargs", "expected"),
    [
        ("<think>bad</think><result>Request: harmful\nResponse: None</result>", {}, ("harmful", None, True)),
        ("<think>ok</think><result>Request: unharmful\nResponse: None</result>", {}, ("unharmful", None, False)),
        (
            "<think>r</think><result>Request: unharmful\nResponse: harmful</result>",
            {"response": "x"},
            ("unharmful", "harmful", True),
        ),
        (
            "<think>r</think><result>Request: unharmful\nResponse: unharmful</result>",
            {"response": "x"},
            ("unharmful", "unharmful", False),
        ),
        # The model judged a response that was never given: ignored.
        ("<think>r</think><result>Request: unharmful\nResponse: harmful</result>", {}, ("unharmful", None, False)),
    ],
)
def test_verdict_from_labels(output, kwargs, expected):
    verdict = Guard(ScriptedBackend([output])).check("hi", **kwargs)
    assert (verdict.request_label, verdict.response_label, verdict.harmful) == expected
    assert not verdict.failed
    assert verdict.reasoning in ("bad", "ok", "r")


def test_missing_response_label_when_a_response_was_given_fails_closed():
    verdict = Guard(ScriptedBackend(["<think>r</think><result>Request: unharmful</result>"])).check(
        "hi", response="some answer"
    )
    assert verdict.failed and not verdict.harmful and verdict.blocked
    assert "response" in verdict.error.message


def test_truncated_output_is_reported_as_truncated():
    verdict = Guard(ScriptedBackend(["<think>step one, step two"], finished=False)).check("hi")
    assert verdict.failed and not verdict.harmful and verdict.blocked
    assert "truncated" in verdict.error.message


def test_verdict_is_frozen_and_serialisable():
    verdict = Guard(ScriptedBackend(["<think>r</think><result>Request: harmful</result>"])).check("hi")
    with pytest.raises(pydantic.ValidationError):
        verdict.harmful = False  # type: ignore[misc]
    assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"text": ""},
        {"text": 42},
        {"text": "hi", "response": 3},
        {"text": "hi", "image": 3.5},
        {"text": "hi", "images": [Image.new("RGB", (8, 8))] * 11},
    ],
)
def test_bad_check_input_raises_input_error(tiny_guard, kwargs):
    with pytest.raises(InputError):
        tiny_guard.check(**kwargs)


def test_check_batch_names_the_bad_input(tiny_guard):
    with pytest.raises(InputError, match="input 1"):
        tiny_guard.check_batch([{"text": "ok"}, {"txt": "typo"}])
    with pytest.raises(InputError, match="input 0"):
        tiny_guard.check_batch([{"image": b"garbage"}])
    with pytest.raises(InputError):
        tiny_guard.check_batch({"text": "not a list"})
    assert tiny_guard.check_batch([]) == []


def test_errors_share_one_base_with_stable_codes():
    from grvl_sdk import errors

    names = [n for n in errors.__all__ if n != "GRVLError"]
    codes = {getattr(errors, n).code for n in names}
    assert len(codes) == len(names)
    assert all(issubclass(getattr(errors, n), GRVLError) for n in names)


def test_model_load_errors_are_typed_and_fast(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Guard.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        Guard.from_pretrained(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="load_adapter_guard"):
        Guard.from_pretrained(str(tmp_path))
    from grvl_sdk.backends import _loading

    monkeypatch.setattr(_loading, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(_loading, "_is_cached", lambda *a: False)
    with pytest.raises(ModelLoadError) as info:
        Guard.from_pretrained("yueliu1999/GuardReasoner-VL-Eco-3B")
    assert "yueliu1999/GuardReasoner-VL-Eco-3B" in info.value.message
    assert "--model" in info.value.message and "GRVL_MODEL" in info.value.message
    with pytest.raises(InputError):
        Guard.from_pretrained(str(tmp_path), quantization="3bit")


def test_model_env_var_picks_the_model(tiny_guard_path, monkeypatch):
    monkeypatch.setenv("GRVL_MODEL", str(tiny_guard_path))
    guard = Guard.from_pretrained(device="cpu")
    assert guard.model_id == str(tiny_guard_path)


def test_loaded_objects_are_exposed(tiny_guard):
    import transformers

    assert isinstance(tiny_guard.backend.model, transformers.Qwen2_5_VLForConditionalGeneration)
    assert tiny_guard.backend.processor.image_processor is not None
    assert tiny_guard.backend.model.dtype.is_floating_point


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantised_loading_on_cpu_keeps_the_vision_tower(tiny_guard_path, rgb_image, quantization):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    guard = Guard.from_pretrained(str(tiny_guard_path), quantization=quantization, device="cpu", max_new_tokens=8)
    model = guard.backend.model
    quantised = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    language = [m for n, m in model.named_modules() if ".language_model." in f".{n}." and isinstance(m, quantised)]
    vision = [m for n, m in model.named_modules() if "visual" in n and isinstance(m, quantised)]
    assert language, "language model layers should be quantised"
    assert not vision, "the vision tower must stay unquantised"
    verdict = guard.check("How do I pick this lock?", image=rgb_image)
    assert isinstance(verdict, Verdict)
    assert verdict.usage.completion_tokens > 0
    batch = guard.check_batch([{"text": "hi"}, {"image": rgb_image}])
    assert len(batch) == 2


def test_max_pixels_bounds_vision_tokens(tiny_guard_path):
    big = Image.new("RGB", (1000, 800), (10, 20, 30))
    small = Guard.from_pretrained(str(tiny_guard_path), device="cpu", max_pixels=28 * 28 * 4, max_new_tokens=1)
    large = Guard.from_pretrained(str(tiny_guard_path), device="cpu", max_pixels=28 * 28 * 64, max_new_tokens=1)
    image_pad = small.backend.encoder.image_token_id
    counts = []
    for guard in (small, large):
        batch = guard.backend.encoder.encode_batch([guard.prepare(image=big)], device="cpu", pixel_dtype=None)
        counts.append(batch.input_ids[0].tolist().count(image_pad))
    assert counts[0] <= 4 < counts[1] <= 64


async def test_acheck_does_not_block_the_event_loop(tiny_guard):
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await tiny_guard.acheck("hello there", max_new_tokens=24)
    stop.set()
    await task
    assert ticks > 1


def test_processor_falls_back_without_torchvision(tiny_guard_path, monkeypatch):
    import transformers

    from grvl_sdk.backends import _processor

    def broken(*args, **kwargs):
        raise ImportError("Qwen2VLVideoProcessor requires the Torchvision library")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", broken)
    processor = _processor.load_processor(str(tiny_guard_path))
    assert type(processor).__name__ == "QwenVLImageTextProcessor"
    assert processor.image_processor is not None and processor.tokenizer is not None
    assert processor.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    sentinel = object()
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: sentinel)
    monkeypatch.setattr(transformers.utils, "is_torchvision_available", lambda: True)
    assert _processor.load_processor(str(tiny_guard_path)) is sentinel
    # without torchvision AutoProcessor is not tried: the tokenizer is parsed once, not twice
    monkeypatch.setattr(transformers.utils, "is_torchvision_available", lambda: False)
    parsed = []
    tokenizer_load = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: parsed.append(a) or tokenizer_load(*a, **k))  # fmt: skip
    assert type(_processor.load_processor(str(tiny_guard_path))).__name__ == "QwenVLImageTextProcessor"
    assert len(parsed) == 1


@pytest.mark.parametrize(
    ("dtype", "expected"), [(None, "float32"), ("auto", "float32"), ("bf16", "bfloat16"), ("float16", "float16")]
)
def test_dtype_resolution_on_cpu(dtype, expected):
    import torch

    assert local_module._resolve_dtype(torch, dtype, "cpu") == getattr(torch, expected)
    with pytest.raises(InputError):
        local_module._resolve_dtype(torch, "float7", "cpu")
