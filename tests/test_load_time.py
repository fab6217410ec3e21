"""Load-time work: the label-trigger scan decodes each token id by the cheap path, with the same texts."""

from __future__ import annotations

from grvl_sdk.backends._token_scan import decode_each as _decode_each


def test_the_fast_per_id_decode_matches_batch_decode(tiny_guard):
    tokenizer = tiny_guard.backend.tokenizer
    ids = range(len(tokenizer))
    assert getattr(tokenizer, "backend_tokenizer", None) is not None  # the fast path is the one taken
    assert _decode_each(tokenizer, ids) == tokenizer.batch_decode([[i] for i in ids])


def test_a_tokenizer_that_cleans_up_spaces_keeps_batch_decode():
    class Slow:
        clean_up_tokenization_spaces = True
        backend_tokenizer = None

        def batch_decode(self, rows):
            return [f"t{row[0]}" for row in rows]

    assert _decode_each(Slow(), range(3)) == ["t0", "t1", "t2"]
