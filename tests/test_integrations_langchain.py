"""LangChain adapters with real langchain-core / langchain classes: ``GuardRunnable``, ``GuardedChatModel``
and ``GuardrailMiddleware`` (``create_agent``), a LangChain fake chat model as the VLM and
``ScriptedBackend`` (or the trained tiny guard) as the guard."""

from __future__ import annotations

import asyncio
import base64
import io
import sys
import time
from typing import Any

import pytest

pytest.importorskip("langchain_core", reason="langchain-core is not installed")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import ChatPromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from PIL import Image
from pydantic import Field

from grvl_sdk import Guard, GuardBlocked, InputError, MissingDependencyError, Verdict
from grvl_sdk.integrations.langchain import GuardRunnable, as_runnable, verdicts_of, with_guard
from grvl_sdk.testing import ScriptedBackend
from grvl_sdk.testing.toy_rule import toy_label


def _guard(**options: Any) -> Guard:
    return Guard(ScriptedBackend.flagging("bomb", "poison"), **options)


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class RecordingChatModel(GenericFakeChatModel):
    """GenericFakeChatModel (streams word by word) that records the messages of each call."""

    calls: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        self.calls.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def bind_tools(self, tools, **kwargs):  # type: ignore[no-untyped-def]
        return self


class ToolCallingChatModel(FakeMessagesListChatModel):
    """FakeMessagesListChatModel (answers from a list, tool calls included) that records its calls."""

    calls: list[list[BaseMessage]] = Field(default_factory=list)
    bound: list[Any] = Field(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        self.calls.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def bind_tools(self, tools, **kwargs):  # type: ignore[no-untyped-def]
        self.bound.append([getattr(t, "name", t) for t in tools])
        return self


def _model(*answers: Any) -> RecordingChatModel:
    return RecordingChatModel(messages=iter(answers))


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: list[tuple[str, list[str]]] = []
        self.ends: list[Any] = []
        self.tokens: list[str] = []
        self.llm_ends: list[Any] = []

    def on_chain_start(self, serialized, inputs, *, tags=None, **kwargs):  # type: ignore[no-untyped-def]
        self.starts.append((kwargs.get("name"), list(tags or [])))

    def on_chain_end(self, outputs, **kwargs):  # type: ignore[no-untyped-def]
        self.ends.append(outputs)

    def on_llm_new_token(self, token, **kwargs):  # type: ignore[no-untyped-def]
        self.tokens.append(str(token))

    def on_llm_end(self, response, **kwargs):  # type: ignore[no-untyped-def]
        self.llm_ends.append(response)


# -- GuardRunnable -------------------------------------------------------------------------------------
def test_runnable_inputs_and_verdicts():
    guard = _guard()
    runnable, guard_runnable = guard.as_runnable(), as_runnable(guard)
    assert isinstance(runnable, GuardRunnable) and runnable.guard is guard
    assert runnable.invoke("How do I bake bread?").decision == "allow"
    assert runnable.invoke("How do I build a bomb?").decision == "block"
    verdict = runnable.invoke({"text": "Soup recipe?", "response": "Add poison."})
    assert isinstance(verdict, Verdict) and verdict.response_label == "harmful" and verdict.blocked
    chat = [SystemMessage("Be kind."), HumanMessage("What goes in soup?"), AIMessage("Some poison.")]
    assert guard_runnable.invoke(chat).response_label == "harmful"
    assert runnable.invoke(ChatPromptValue(messages=[HumanMessage("hi")])).decision == "allow"
    assert runnable.invoke([("user", "a bomb please")]).request_label == "harmful"
    with pytest.raises(InputError):
        runnable.invoke({"prompt": "unknown key"})


def test_runnable_schemas():
    runnable = as_runnable(_guard())
    schema = runnable.get_input_jsonschema()
    kinds = str(schema)
    assert "GuardCheckInput" in kinds and "'type': 'string'" in kinds and "PromptValue" in kinds
    assert runnable.get_output_schema() is Verdict
    assert "request_label" in runnable.get_output_jsonschema()["properties"]


def test_runnable_batch_is_one_backend_call():
    guard = _guard()
    runnable = as_runnable(guard)
    inputs: list[Any] = [f"question {i}" for i in range(6)] + [{"text": "a bomb"}, [HumanMessage("poison?")]]
    before = len(guard.backend.calls)
    verdicts = runnable.batch(inputs)
    assert len(guard.backend.calls) - before == 1 and len(guard.backend.calls[-1]) == 8
    assert [v.decision for v in verdicts] == ["allow"] * 6 + ["block", "block"]


async def test_runnable_abatch_is_one_backend_call_and_bad_inputs_fail_alone():
    guard = _guard()
    runnable = as_runnable(guard)
    inputs: list[Any] = [f"async question {i}" for i in range(7)] + ["bomb"]
    verdicts = await runnable.abatch(inputs)
    assert len(guard.backend.calls) == 1 and len(guard.backend.calls[0]) == 8
    assert verdicts[-1].blocked and not verdicts[0].blocked
    mixed = runnable.batch(["fine", {"bad": 1}, {"image": b"not an image"}, "also fine"], return_exceptions=True)
    assert isinstance(mixed[1], InputError) and isinstance(mixed[2], InputError)
    assert isinstance(mixed[0], Verdict) and isinstance(mixed[3], Verdict)
    assert len(guard.backend.calls) == 2  # the readable inputs: still one call


async def test_runnable_ainvoke_never_blocks_the_loop():
    runnable = as_runnable(Guard(ScriptedBackend.flagging("bomb", delay=0.3)))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    verdict = await runnable.ainvoke("a bomb")
    task.cancel()
    assert verdict.blocked and time.perf_counter() - started >= 0.3
    assert ticks >= 10  # the loop kept running while the guard worked


def test_runnable_config_run_name_tags_and_callbacks():
    runnable = as_runnable(_guard())
    recorder = Recorder()
    verdict = runnable.invoke("bomb", {"run_name": "input-guard", "tags": ["safety"], "callbacks": [recorder]})
    assert recorder.starts == [("input-guard", ["safety"])]
    assert recorder.ends == [verdict]
    recorder = Recorder()
    runnable.batch(["a", "b"], {"run_name": "batch-guard", "callbacks": [recorder]})
    assert [name for name, _ in recorder.starts] == ["batch-guard", "batch-guard"]
    assert all(isinstance(v, Verdict) for v in recorder.ends) and len(recorder.ends) == 2
    # In a chain, the guard run is a child run with the verdict as its output.
    recorder = Recorder()
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | runnable
    result = chain.invoke({"q": "hello"}, {"callbacks": [recorder]})
    assert "GuardRunnable" in [name for name, _ in recorder.starts]
    assert [end for end in recorder.ends if isinstance(end, Verdict)] == [result, result]  # guard run, chain


def test_runnable_multimodal_blocks_reach_the_guard():
    guard = _guard()
    message = HumanMessage(content=[
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "base64": _png(), "mime_type": "image/png"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_png()}"}},
    ])  # fmt: skip
    as_runnable(guard).invoke([message])
    item = guard.backend.calls[-1][0]
    assert len(item.images) == 2 and item.images[0].size == (32, 24)


# -- GuardedChatModel ----------------------------------------------------------------------------------
def test_chat_model_invoke_attaches_verdicts():
    guard = _guard()
    model = _model("Bread needs flour and water.")
    guarded = with_guard(model, guard)
    answer = guarded.invoke("How do I bake bread?")
    assert isinstance(answer, AIMessage) and answer.content == "Bread needs flour and water."
    record = answer.response_metadata["grvl"]
    assert record["blocked"] is False and record["decision"] == "allow"
    assert [v.stage for v in verdicts_of(answer)] == ["request", "response"]


def test_chat_model_blocked_request_never_reaches_the_model():
    guard = _guard()
    model = _model("never said")
    guarded = with_guard(model, guard)
    with pytest.raises(GuardBlocked) as info:
        guarded.invoke([HumanMessage("How do I build a bomb?")])
    assert info.value.stage == "request" and model.calls == []
    refusing = with_guard(model, guard, policy={"on_block": "refuse", "refusal": "No."})
    answer = refusing.invoke("bomb instructions")
    assert answer.content == "No." and answer.response_metadata["grvl"]["blocked"] is True
    assert answer.response_metadata["finish_reason"] == "content_filter" and model.calls == []
    assert next(iter(refusing.stream("bomb instructions"))).content == "No." and model.calls == []


def test_chat_model_harmful_output_raises_or_refuses():
    guard = _guard()
    with pytest.raises(GuardBlocked) as info:
        with_guard(_model("Add poison to it."), guard).invoke("What goes in soup?")
    assert info.value.stage == "response"
    answer = with_guard(_model("Add poison to it."), guard, policy={"on_block": "refuse"}).invoke("Soup?")
    assert "poison" not in answer.content and answer.response_metadata["grvl"]["stage"] == "response"
    assert verdicts_of(answer)[-1].response_label == "harmful"


def test_chat_model_multimodal_blocks_reach_the_guard():
    guard = _guard()
    guarded = with_guard(_model("A green rectangle."), guard)
    guarded.invoke([HumanMessage(content=[
        {"type": "text", "text": "Describe it."},
        {"type": "image", "base64": _png(), "mime_type": "image/png"},
    ])])  # fmt: skip
    request, response = guard.backend.calls[0][0], guard.backend.calls[1][0]
    assert len(request.images) == 1 and len(response.images) == 1 and response.response == "A green rectangle."


def test_chat_model_stream_buffer_never_delivers_harmful_text():
    guard = _guard()
    harmful = "Sure. " + "Mix the ingredients well. " * 10 + "Then add rat poison and serve."
    guarded = with_guard(_model(harmful), guard, policy={"stream_check_every": 40})
    delivered: list[str] = []
    with pytest.raises(GuardBlocked) as info:
        for chunk in guarded.stream("What goes in soup?"):
            delivered.append(chunk.content)
    assert info.value.stage in ("stream", "response")
    assert "poison" not in "".join(delivered) and len(delivered) > 0  # earlier, checked text was released
    refusing = with_guard(_model(harmful), guard, policy={"on_block": "refuse", "stream_check_every": 40})
    chunks = list(refusing.stream("What goes in soup?"))
    assert "poison" not in "".join(str(c.content) for c in chunks)
    assert chunks[-2].response_metadata["grvl"]["blocked"] is True  # the refusal, then LangChain's last chunk


def test_chat_model_stream_allowed_and_passthrough_final_check():
    guard = _guard()
    verdicts: list[Verdict] = []
    guard.add_hook(verdicts.append)
    chunks = list(with_guard(_model("Flour water salt yeast"), guard).stream("Bread?"))
    assert "".join(str(c.content) for c in chunks) == "Flour water salt yeast"
    assert any(c.response_metadata.get("grvl", {}).get("decision") == "allow" for c in chunks)
    verdicts.clear()
    passthrough = with_guard(
        _model("one two three poison", "one two three poison"), guard, policy={"stream_mode": "passthrough"}
    )
    stream = passthrough.stream("Count?")
    first = next(stream)
    stream.close()  # the consumer stops early: what was delivered still gets its final check
    assert first.content == "one" and [v.stage for v in verdicts][-1] == "response"
    verdicts.clear()
    with pytest.raises(GuardBlocked):
        list(passthrough.stream("Count again?"))
    assert verdicts[-1].stage == "response" and verdicts[-1].response_label == "harmful"


async def test_chat_model_async_invoke_and_astream():
    guard = _guard()
    answer = await with_guard(_model("Fine words."), guard).ainvoke("hello")
    assert answer.content == "Fine words." and answer.response_metadata["grvl"]["decision"] == "allow"
    delivered: list[str] = []
    with pytest.raises(GuardBlocked):
        async for chunk in with_guard(_model("take this poison now"), guard).astream("hello"):
            delivered.append(str(chunk.content))
    assert delivered == []
    model = _model("never")
    refusing = with_guard(model, guard, policy={"on_block": "refuse"})
    chunks = [chunk async for chunk in refusing.astream("a bomb")]
    assert chunks[0].response_metadata["grvl"]["stage"] == "request" and model.calls == []


async def test_chat_model_unjudged_output_reaches_no_callback_or_event_stream():
    guard = _guard()
    guarded = with_guard(_model("a b c d poison e f"), guard, policy={"on_block": "refuse"})
    recorder = Recorder()
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | guarded  # the chain's config reaches the model
    events = [event async for event in chain.astream_events({"q": "Soup?"}, {"callbacks": [recorder]}, version="v2")]
    seen = str([event.get("data") for event in events]) + str(recorder.tokens) + str(recorder.llm_ends)
    assert "poison" not in seen and "Sorry" in seen


def test_chat_model_batch_lcel_and_fallbacks():
    guard = _guard()
    guarded = with_guard(_model("Bread.", "Soup.", "Salad."), guard)
    answers = guarded.batch(["a", "b", "c"])
    assert sorted(str(a.content) for a in answers) == ["Bread.", "Salad.", "Soup."]
    chain = (
        ChatPromptTemplate.from_messages([("system", "Be brief."), ("user", "{q}")])
        | with_guard(_model("Knead the dough."), guard)
        | StrOutputParser()
    )
    assert chain.invoke({"q": "How do I bake bread?"}) == "Knead the dough."
    safe = with_guard(_model("Fallback answer."), guard)
    with_fallback = with_guard(_model("poison it"), guard).with_fallbacks([safe], exceptions_to_handle=(GuardBlocked,))
    assert with_fallback.invoke("Soup?").content == "Fallback answer."


def test_chat_model_bind_tools_and_tool_calls_judged():
    guard = _guard()
    call = {"name": "search", "args": {"q": "how to make a bomb"}, "id": "c1"}
    model = ToolCallingChatModel(responses=[AIMessage("", tool_calls=[call])])
    bound = with_guard(model, guard).bind_tools([{"type": "function", "function": {"name": "search"}}])
    assert model.bound == [[{"type": "function", "function": {"name": "search"}}]]
    with pytest.raises(GuardBlocked) as info:
        bound.invoke("Find me a cake recipe")
    assert info.value.stage == "response" and "[tool call] search" in guard.backend.calls[-1][0].response


class ChunkModel(GenericFakeChatModel):
    """Streams the given ``AIMessageChunk``s as they are (provider-shaped chunks)."""

    messages: Any = iter(())
    chunks: list[Any] = Field(default_factory=list)

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
        from langchain_core.outputs import ChatGenerationChunk

        for chunk in self.chunks:
            yield ChatGenerationChunk(message=chunk)


def test_chat_model_judges_what_providers_keep_in_additional_kwargs():
    """Regression: OpenAI's legacy ``function_call`` and ``audio`` kept in ``additional_kwargs`` (as
    langchain-openai does) went through unjudged, in messages and in stream chunks."""
    from langchain_core.messages import AIMessageChunk

    guard = _guard()
    legacy = {"name": "search", "arguments": '{"q": "rat poison"}'}
    with pytest.raises(GuardBlocked):
        with_guard(ToolCallingChatModel(responses=[AIMessage("", additional_kwargs={"function_call": legacy})]),
                   guard).invoke("Soup?")  # fmt: skip
    assert "[tool call] search" in guard.backend.calls[-1][0].response
    audio = AIMessage("", additional_kwargs={"audio": {"id": "a1", "data": "AAAA", "transcript": "words"}})
    with pytest.raises(InputError, match="audio"):
        with_guard(ToolCallingChatModel(responses=[audio]), guard).invoke("Soup?")
    fragments = [
        AIMessageChunk("", additional_kwargs={"function_call": {"name": "search", "arguments": '{"q": "rat poi'}}),
        AIMessageChunk("", additional_kwargs={"function_call": {"arguments": 'son"}'}}),
    ]
    delivered: list[Any] = []
    with pytest.raises(GuardBlocked):
        for chunk in with_guard(ChunkModel(chunks=fragments), guard).stream("Soup?"):
            delivered.append(chunk)
    assert delivered == []
    streamed_audio = [AIMessageChunk("", additional_kwargs={"audio": {"transcript": "words"}})]
    with pytest.raises(InputError, match="audio"):
        list(with_guard(ChunkModel(chunks=streamed_audio), guard).stream("Soup?"))
    # Regression: reasoning kept in additional_kwargs (ChatDeepSeek, ChatOllama...) reached the caller unjudged.
    reasoning = AIMessage("Carrots.", additional_kwargs={"reasoning_content": "first the rat poison"})
    with pytest.raises(GuardBlocked):
        with_guard(ToolCallingChatModel(responses=[reasoning]), guard).invoke("Soup?")
    assert "rat poison" in guard.backend.calls[-1][0].response
    streamed = [AIMessageChunk("", additional_kwargs={"reasoning_content": "rat poison"}), AIMessageChunk("Hi.")]
    delivered.clear()
    with pytest.raises(GuardBlocked):
        for chunk in with_guard(ChunkModel(chunks=streamed), guard).stream("Soup?"):
            delivered.append(chunk)
    assert delivered == []


def test_chat_model_stream_judges_tool_call_chunks_and_content_blocks():
    from langchain_core.messages import AIMessageChunk

    guard = _guard()
    tool_chunks = [
        AIMessageChunk("", tool_call_chunks=[{"name": "search", "args": '{"q": "rat ', "id": "1", "index": 0}]),
        AIMessageChunk("", tool_call_chunks=[{"name": None, "args": 'poison"}', "id": None, "index": 0}]),
    ]
    blocks = [AIMessageChunk([{"type": "text", "text": "rat poi", "index": 0}]),
              AIMessageChunk([{"type": "text", "text": "son", "index": 0}])]  # fmt: skip
    images = [AIMessageChunk([{"type": "image", "base64": _png(), "mime_type": "image/png"}])]
    for chunks in (tool_chunks, blocks):
        delivered: list[Any] = []
        with pytest.raises(GuardBlocked):
            for chunk in with_guard(ChunkModel(chunks=chunks), guard).stream("Soup?"):
                delivered.append(chunk)
        assert delivered == []
    with pytest.raises(InputError, match="image"):  # a streamed image: refused, never passed unjudged
        list(with_guard(ChunkModel(chunks=images), guard).stream("Soup?"))


def test_chat_model_with_structured_output_judges_the_tool_call():
    from pydantic import BaseModel

    class Answer(BaseModel):
        text: str

    guard = _guard()
    harmful = {"name": "Answer", "args": {"text": "use poison"}, "id": "1"}
    with pytest.raises(GuardBlocked):
        with_guard(ToolCallingChatModel(responses=[AIMessage("", tool_calls=[harmful])]), guard).with_structured_output(
            Answer
        ).invoke("Soup?")
    fine = {"name": "Answer", "args": {"text": "use salt"}, "id": "1"}
    model = with_guard(ToolCallingChatModel(responses=[AIMessage("", tool_calls=[fine])]), guard)
    assert model.with_structured_output(Answer).invoke("Soup?") == Answer(text="use salt")


def test_chat_model_with_trained_tiny_guard(request):
    try:
        guard = request.getfixturevalue("trained_tiny_guard")
    except pytest.FixtureLookupError:
        pytest.skip("the trained tiny guard fixture is not available in this checkout")
    # Texts from the toy rule's own templates and vocabulary (grvl_sdk.testing.toy_rule): the trained guard
    # learned those. Words it never saw are split into letters and it may guess wrong ("bake" starts like
    # "bomb"), so no everyday text like "Knead the dough and bake it." here.
    question, answer, harmful = (
        "How do I cook bread?",
        "You can cook bread in a few steps.",
        "Sure, here is how to mix the poison.",
    )
    assert (toy_label(question), toy_label(answer), toy_label(harmful)) == ("unharmful", "unharmful", "harmful")
    guarded = with_guard(_model(answer), guard)
    reply = guarded.invoke(question)
    assert reply.content == answer and [v.decision for v in verdicts_of(reply)] == ["allow", "allow"]
    with pytest.raises(GuardBlocked) as info:
        with_guard(_model(harmful), guard).invoke(question)
    assert info.value.stage == "response" and info.value.verdict.response_label == "harmful"
    model = _model("never")
    with pytest.raises(GuardBlocked):
        with_guard(model, guard).invoke("How do I build a bomb?")
    assert model.calls == []
    verdicts = guard.as_runnable().batch(
        [question, "Where can I buy rat poison?", {"text": question, "response": answer}]
    )
    assert [v.decision for v in verdicts] == ["allow", "block", "allow"]


def test_missing_langchain_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    for name in [m for m in sys.modules if m.startswith("grvl_sdk.integrations.langchain")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingDependencyError, match=r"grvl-sdk\[langchain\]"):
        import grvl_sdk.integrations.langchain  # noqa: F401


# -- GuardrailMiddleware (create_agent) ----------------------------------------------------------------
agents = pytest.importorskip("langchain.agents", reason="the langchain package is not installed")
from grvl_sdk.integrations.langchain import GuardrailMiddleware  # noqa: E402

TOOL_RUNS: list[str] = []


@tool
def search(q: str) -> str:
    """Search the web."""
    TOOL_RUNS.append(q)
    return "Found: " + ("rat poison dosage chart" if "rats" in q else f"a page about {q}")


def _agent(model: Any, guard: Guard, **options: Any) -> Any:
    TOOL_RUNS.clear()
    return agents.create_agent(model, [search], middleware=[GuardrailMiddleware(guard, **options)])


def _call(q: str, i: str = "c1") -> dict[str, Any]:
    return {"name": "search", "args": {"q": q}, "id": i}


def test_agent_blocks_user_input_before_the_model():
    guard = _guard()
    model = ToolCallingChatModel(responses=[AIMessage("never")])
    out = _agent(model, guard).invoke({"messages": [HumanMessage("How do I build a bomb?")]})
    assert model.calls == [] and out["messages"][-1].content == guard.policy.refusal
    assert out["messages"][-1].response_metadata["grvl"]["stage"] == "request"


def test_agent_allowed_run_judges_input_once_and_each_output():
    guard = _guard()
    verdicts: list[Verdict] = []
    guard.add_hook(verdicts.append)
    model = ToolCallingChatModel(responses=[AIMessage("", tool_calls=[_call("cake")]), AIMessage("Here it is.")])
    out = _agent(model, guard).invoke({"messages": [HumanMessage("Find a cake recipe")]})
    assert out["messages"][-1].content == "Here it is." and TOOL_RUNS == ["cake"] and len(model.calls) == 2
    assert [v.stage for v in verdicts] == ["request", "response", "response"]


def test_agent_multi_turn_judges_each_new_user_message_with_context():
    from langgraph.checkpoint.memory import InMemorySaver

    guard = _guard()
    verdicts: list[Verdict] = []
    guard.add_hook(verdicts.append)
    model = ToolCallingChatModel(responses=[AIMessage("one"), AIMessage("two")])
    agent = agents.create_agent(model, [], middleware=[GuardrailMiddleware(guard)], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke({"messages": [HumanMessage("hi")]}, config)
    out = agent.invoke({"messages": [HumanMessage("now a bomb")]}, config)
    assert [v.stage for v in verdicts] == ["request", "response", "request"] and len(model.calls) == 1
    assert out["messages"][-1].content == guard.policy.refusal
    assert "User: hi" in guard.backend.calls[-1][0].text  # earlier turns as context


def test_agent_blocks_model_output_and_replaces_it():
    guard = _guard()
    model = ToolCallingChatModel(responses=[AIMessage("Add poison to the soup.")])
    out = _agent(model, guard).invoke({"messages": [HumanMessage("What goes in soup?")]})
    assert [type(m).__name__ for m in out["messages"]] == ["HumanMessage", "AIMessage"]
    assert out["messages"][-1].content == guard.policy.refusal and "poison" not in str(out["messages"])


def test_agent_blocks_a_harmful_tool_call_before_the_tool_runs():
    guard = _guard()
    model = ToolCallingChatModel(responses=[AIMessage("", tool_calls=[_call("bomb making")]), AIMessage("done")])
    out = _agent(model, guard).invoke({"messages": [HumanMessage("Find a cake recipe")]})
    assert TOOL_RUNS == [] and out["messages"][-1].tool_calls == [] and len(model.calls) == 1
    assert out["messages"][-1].response_metadata["grvl"]["blocked"] is True


async def test_agent_judges_tool_results_when_asked_async():
    guard = _guard()
    model = ToolCallingChatModel(responses=[AIMessage("", tool_calls=[_call("rats")]), AIMessage("Done.")])
    agent = _agent(model, guard, check_tool_results=True, check_output=False)
    assert isinstance(GuardrailMiddleware(guard, check_tool_results=True), GuardrailMiddleware)
    # Without check_tool_results the middleware defines no wrap_tool_call (no extra tool node in the graph).
    assert type(GuardrailMiddleware(guard)).wrap_tool_call is agents.middleware.AgentMiddleware.wrap_tool_call
    out = await agent.ainvoke({"messages": [HumanMessage("How do I get rid of mice?")]})
    tool_message = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert tool_message.status == "error" and tool_message.content == guard.policy.refusal
    assert "poison" not in str(model.calls[-1])  # the model never saw the harmful tool result


async def test_agent_async_hooks_and_raise_policy():
    guard = _guard()
    model = ToolCallingChatModel(responses=[AIMessage("never")])
    with pytest.raises(GuardBlocked) as info:
        await _agent(model, guard, policy={"on_block": "raise"}).ainvoke({"messages": [HumanMessage("a bomb")]})
    assert info.value.stage == "request" and model.calls == []
    model = ToolCallingChatModel(responses=[AIMessage("poison")])
    out = await _agent(model, guard).ainvoke({"messages": [HumanMessage("Soup?")]})
    assert out["messages"][-1].content == guard.policy.refusal


def test_agent_with_guarded_model_streams_no_unjudged_tokens():
    guard = _guard()
    model = with_guard(_model("first second third poison fourth"), guard, policy={"on_block": "refuse"})
    agent = agents.create_agent(model, [], middleware=[GuardrailMiddleware(guard)])
    streamed = [chunk for chunk, _ in agent.stream({"messages": [HumanMessage("Soup?")]}, stream_mode="messages")]
    assert "poison" not in str([getattr(c, "content", "") for c in streamed])
