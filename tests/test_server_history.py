"""``grvl_sdk.server.history``: the earlier turns a context window leaves out, cut into stable chunks."""

from __future__ import annotations

from grvl_sdk.messages import Message
from grvl_sdk.server.history import history_chunks


def chat(n: int, size: int = 300) -> list[Message]:
    turns = []
    for i in range(n):
        turns += [Message(role="user", text=f"u{i} " + "x" * size), Message(role="assistant", text=f"a{i}")]
    return [*turns, Message(role="user", text="latest")]


def test_nothing_when_the_earlier_turns_fit():
    assert history_chunks(chat(2), 2000) == []
    assert history_chunks([Message(role="user", text="only")], 2000) == []


def test_chunks_cover_every_earlier_turn_within_the_window_and_stay_stable():
    chunks = history_chunks(chat(20), 2000)
    text = "".join(t for t, _ in chunks)
    assert all(f"u{i} " in text and f"a{i}" in text for i in range(20)) and "latest" not in text
    assert all(len(t) <= 2000 + len("[Earlier in the conversation]\n") for t, _ in chunks)
    longer = history_chunks(chat(30), 2000)
    assert longer[: len(chunks) - 1] == chunks[:-1]  # a growing chat keeps its earlier chunks: cache hits


def test_long_turns_are_split_and_images_kept():
    turns = [Message(role="user", text="y" * 5000, images=tuple(f"img{i}" for i in range(12))),
             Message(role="user", text="latest")]  # fmt: skip
    chunks = history_chunks(turns, 2000)
    assert sum(t.count("y") for t, _ in chunks) == 5000
    assert [i for _, images in chunks for i in images] == [f"img{i}" for i in range(12)]
    assert all(len(images) <= 10 for _, images in chunks)
    assert history_chunks(turns, 0)  # a window of 0 (latest turn alone) still has the history judged
