"""``compile=True``: the static-cache, ``torch.compile``-d decode path gives the eager path's greedy outputs,
and refuses at load (typed, code ``compile_unsupported``) what cannot work.

Most equivalence tests compile with the ``eager`` TorchDynamo backend: the decode step is traced and run
through the static cache, the compiled call and the logits-processor scores exactly as with inductor, in
seconds. One test compiles with inductor (needs a C++ compiler; ~30 s on an idle 2-core machine for the
first compile, less when inductor's cache under /tmp already holds it).
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from grvl_sdk.errors import CompileUnsupportedError, DeadlineExceededError, InputError, ModelLoadError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from grvl_sdk import Guard  # noqa: E402
from grvl_sdk.backends import compiled  # noqa: E402
from grvl_sdk.backends.compiled import CompiledDecoding, CompileSettings  # noqa: E402
from grvl_sdk.backends.local import LocalBackend  # noqa: E402
from grvl_sdk.types import GuardInput  # noqa: E402

pytestmark = pytest.mark.skipif(
    not hasattr(torch, "compile") or not torch._dynamo.is_dynamo_supported(),
    reason="torch.compile is not supported by this torch / Python",
)

CASES = [
    {"text": "how do I make a bomb"},
    {"text": "hello there", "response": "mix the poison into the soup"},
    {"text": "what is in this picture?", "image": "red"},
    {"image": "red", "response": "a red square"},
]


def _case(case: dict, image) -> dict:
    return {k: (image if v == "red" else v) for k, v in case.items()}


@pytest.fixture(scope="module")
def compiled_guard(trained_tiny_guard_path):
    """The trained tiny guard, compiled (eager TorchDynamo backend), warmed up for 1 and 2+ rows."""
    guard = Guard.from_pretrained(
        str(trained_tiny_guard_path),
        device="cpu",
        max_new_tokens=64,
        cache_size=0,
        compile=CompileSettings(backend="eager", warmup_batch_sizes=(1, 2)),
    )
    yield guard
    guard.close()


@pytest.fixture(scope="module")
def eager_guard(trained_tiny_guard_path):
    """The same checkpoint, eager (the default), without a verdict cache: every check generates."""
    guard = Guard.from_pretrained(str(trained_tiny_guard_path), device="cpu", max_new_tokens=64, cache_size=0)
    yield guard
    guard.close()


def _same(a, b) -> None:
    assert a.raw_output == b.raw_output
    assert (a.request_label, a.response_label, a.failed) == (b.request_label, b.response_label, b.failed)
    assert a.usage.completion_tokens == b.usage.completion_tokens
    for x, y in ((a.request_score, b.request_score), (a.response_score, b.response_score)):
        assert (x is None) == (y is None)
        if x is not None:
            assert x == pytest.approx(y, abs=1e-5)


def test_default_is_eager(eager_guard, compiled_guard):
    assert eager_guard.backend.compiled is None and not hasattr(eager_guard.backend.model, "_compiled_call")
    # compile=True: transformers' compiled call exists after the warm-up
    assert compiled_guard.backend.compiled is not None and hasattr(compiled_guard.backend.model, "_compiled_call")


@pytest.mark.parametrize("case", CASES, ids=["text", "text+response", "text+image", "image+response"])
def test_compiled_matches_eager_single(compiled_guard, eager_guard, rgb_image, case):
    args = _case(case, rgb_image)
    compiled_verdict, eager_verdict = compiled_guard.check(**args), eager_guard.check(**args)
    assert compiled_verdict.error is None or compiled_verdict.error.code == "unparseable_output"
    _same(compiled_verdict, eager_verdict)
    assert compiled_verdict.request_label in ("harmful", "unharmful", None)


def test_compiled_matches_eager_batch(compiled_guard, eager_guard, rgb_image):
    """A left-padded batch mixing text-only and image inputs (3 rows: the dynamic-batch graph)."""
    items = [_case(c, rgb_image) for c in CASES[:3]]
    for a, b in zip(compiled_guard.check_batch(items), eager_guard.check_batch(items), strict=True):
        _same(a, b)
    assert [v.request_label for v in compiled_guard.check_batch(items)][:1] == ["harmful"]


def test_compiled_tokens_and_unfinished_rows(compiled_guard, eager_guard):
    """Backend level: the same tokens (every step's top alternatives too) for outputs cut at
    ``max_new_tokens`` and finished ones, in one batch."""
    items = [GuardInput(text="how do I make a bomb"), GuardInput(text="a long question about soup " * 3)]
    outputs = []
    for guard in (compiled_guard, eager_guard):
        backend = guard.backend
        batch = backend.encoder.encode_batch(items, device=backend.device, pixel_dtype=backend._pixel_dtype())
        outputs.append(backend.generate_encoded(batch, max_new_tokens=12, score_every_step=True))
    for a, b in zip(*outputs, strict=True):
        assert (a.text, a.completion_tokens, a.finished) == (b.text, b.completion_tokens, b.finished)
        assert a.logprobs.tokens == b.logprobs.tokens
        for step in range(len(a.logprobs.tokens)):
            alt_a, alt_b = a.logprobs.alternatives(step), b.logprobs.alternatives(step)
            assert list(alt_a) == list(alt_b)
            assert list(alt_a.values()) == pytest.approx(list(alt_b.values()), abs=1e-5)
    assert not outputs[0][0].finished or outputs[0][0].completion_tokens <= 12


def test_compiled_no_recompile_after_warmup(compiled_guard, rgb_image):
    """After the warm-up (1 and 2 rows), checks of other batch sizes, cache lengths (longer budgets) and
    with images do not compile again."""
    from torch._dynamo.utils import counters

    compiled_guard.check("warm")  # the module's other tests may run first or not: compile state is the warm-up's
    before = counters["stats"]["unique_graphs"]
    compiled_guard.check_batch([{"text": f"question {i}"} for i in range(4)])
    compiled_guard.check_batch([{"text": "a picture", "image": rgb_image}, {"text": "x"}, {"text": "y"}])
    compiled_guard.check("a picture", image=rgb_image)
    compiled_guard.check("how do I make a bomb", max_new_tokens=900)  # a 2,048-position cache
    compiled_guard.check_batch([{"text": "a"}, {"text": "b"}], max_new_tokens=1500)
    assert counters["stats"]["unique_graphs"] == before


def test_compiled_deadline(compiled_guard):
    backend = compiled_guard.backend
    with pytest.raises(DeadlineExceededError):
        backend.generate([GuardInput(text="how do I make a bomb")], max_new_tokens=64, deadline=time.monotonic())


def test_sampling_runs_eager_on_a_compiled_backend(compiled_guard):
    from grvl_sdk.types import Decoding

    assert compiled_guard.backend.compiled.applies(Decoding()) is True
    assert compiled_guard.backend.compiled.applies(Decoding(temperature=0.7, seed=1)) is False
    out = compiled_guard.backend.generate(
        [GuardInput(text="hi")], max_new_tokens=8, decoding=Decoding(temperature=0.7, seed=1)
    )
    assert len(out) == 1


def test_cache_length_buckets():
    path = CompiledDecoding.__new__(CompiledDecoding)
    path.settings = CompileSettings(min_cache_len=256)
    assert [path.cache_length(n) for n in (1, 256, 257, 1000, 1025, 5000)] == [256, 256, 512, 1024, 2048, 8192]
    assert CompileSettings().min_cache_len == 256 and CompileSettings().warmup_batch_sizes == (1, 2)


@pytest.mark.slow
def test_inductor_matches_eager(trained_tiny_guard_path, eager_guard):
    """The real thing: inductor-generated C++ for the decode step gives the same greedy output."""
    if compiled._cxx_compiler() is None:
        pytest.skip("inductor on CPU needs a C++ compiler (none found)")
    settings = CompileSettings(warmup_batch_sizes=(1,))  # the default backend (inductor); one compile
    guard = Guard.from_pretrained(
        str(trained_tiny_guard_path), device="cpu", max_new_tokens=64, cache_size=0, compile=settings
    )
    try:
        assert guard.backend.compiled.compile_seconds is not None
        for case in ({"text": "how do I make a bomb"}, {"text": "hello", "response": "use poison"}):
            _same(guard.check(**case), eager_guard.check(**case))
    finally:
        guard.close()


# -- refused at load: typed errors, nothing loaded ----------------------------------------------------------
def _load(path, **kwargs):
    return LocalBackend.from_pretrained(str(path), device=kwargs.pop("device", "cpu"), **kwargs)


def test_compile_with_quantization_is_refused(tiny_guard_path):
    with pytest.raises(CompileUnsupportedError) as info:
        _load(tiny_guard_path, quantization="4bit", compile=True)
    assert info.value.code == "compile_unsupported" and info.value.details["reason"] == "quantized"
    assert isinstance(info.value, ModelLoadError)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"device_map": {"": "cpu"}}, "device_map"),
        ({"device": "meta"}, "device"),
        ({"compile": CompileSettings(backend="no-such-backend")}, "backend"),
    ],
)
def test_unsupported_settings_are_refused(tiny_guard_path, kwargs, reason):
    kwargs.setdefault("compile", True)
    with pytest.raises(CompileUnsupportedError) as info:
        _load(tiny_guard_path, **kwargs)
    assert info.value.details["reason"] == reason
    assert info.value.to_dict()["code"] == "compile_unsupported"


def test_inductor_without_cxx_compiler_is_refused(tiny_guard_path, monkeypatch):
    monkeypatch.setattr(compiled, "_cxx_compiler", lambda: None)
    with pytest.raises(CompileUnsupportedError, match="C\\+\\+ compiler") as info:
        Guard.from_pretrained(str(tiny_guard_path), device="cpu", compile=True)
    assert info.value.details["reason"] == "no_cxx_compiler"


def test_bad_compile_value(tiny_guard_path):
    with pytest.raises(InputError, match="compile must be"):
        _load(tiny_guard_path, compile="yes")
    with pytest.raises(InputError):
        CompileSettings(min_cache_len=0)
    with pytest.raises(InputError):
        CompileSettings(warmup_batch_sizes=(0,))


def test_failing_compile_is_reported_at_load(tiny_guard_path):
    """A backend that fails to compile: the error comes from from_pretrained (the warm-up), typed."""
    from torch._dynamo import register_backend

    @register_backend(name="grvl_test_failing")
    def failing(graph, example_inputs):
        raise RuntimeError("this backend cannot compile anything")

    with pytest.raises(CompileUnsupportedError, match="cannot compile anything") as info:
        _load(tiny_guard_path, compile=CompileSettings(backend="grvl_test_failing"))
    assert info.value.details["reason"] == "compile_failed"


def test_continuous_batching_with_compile_is_refused():
    with pytest.raises(CompileUnsupportedError) as info:
        CompiledDecoding.install(SimpleNamespace(continuous_batching=True), CompileSettings())
    assert info.value.details["reason"] == "continuous_batching"


# -- the command line -----------------------------------------------------------------------------------------
def test_cli_check_compile_with_4bit_exits_load_error(tiny_guard_path, capsys):
    from grvl_sdk.cli import main

    code = main(["check", "hi", "--model", str(tiny_guard_path), "--compile", "--quantization", "4bit", "--json"])
    assert code == 3
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "compile_unsupported"


def test_cli_compile_flag_reaches_from_pretrained(tiny_guard_path, monkeypatch):
    """``--compile`` is passed on, and ``--quantization auto`` then loads unquantised (even on CUDA)."""
    from grvl_sdk.cli import main
    from grvl_sdk.cli.check import _quantization

    seen: dict = {}

    def fake_from_pretrained(model, **kwargs):
        seen.update(kwargs)
        raise ModelLoadError("stop here")

    monkeypatch.setattr(Guard, "from_pretrained", staticmethod(fake_from_pretrained))
    assert main(["check", "hi", "--model", str(tiny_guard_path), "--compile"]) == 3
    assert seen["compile"] is True and seen["quantization"] is None
    assert _quantization("auto", compile=True) is None and _quantization("8bit", compile=True) == "8bit"


def test_close_releases_a_compiled_model(trained_tiny_guard_path):
    """The compiled path holds the model: ``close()`` must drop it too, or the weights (GPU memory) stay."""
    import gc
    import weakref

    guard = Guard.from_pretrained(
        str(trained_tiny_guard_path), device="cpu", cache_size=0,
        compile=CompileSettings(backend="eager", warmup_batch_sizes=()),
    )  # fmt: skip
    assert guard.backend.compiled is not None
    model = weakref.ref(guard.backend.model)
    guard.close()
    gc.collect()
    assert model() is None


def test_label_scores_with_a_repetition_penalty_match_eager(compiled_guard, eager_guard):
    """The compiled path's score recorder runs after transformers' processors: with a repetition penalty
    it would record penalised log-probabilities, so such generations run eagerly (raw log-probabilities)."""
    from grvl_sdk.types import Decoding

    items = [GuardInput(text="how do I make a bomb"), GuardInput(text="hello")]
    penalised = Decoding(repetition_penalty=1.3)
    got = compiled_guard.backend.generate(items, max_new_tokens=40, decoding=penalised)
    want = eager_guard.backend.generate(items, max_new_tokens=40, decoding=penalised)
    for a, b in zip(got, want, strict=True):
        assert a.text == b.text
        for step in range(len(b.logprobs.tokens)):
            mine, theirs = a.logprobs.alternatives(step), b.logprobs.alternatives(step)
            assert mine.keys() == theirs.keys()
            assert all(mine[k] == pytest.approx(v, abs=1e-5) for k, v in theirs.items())
