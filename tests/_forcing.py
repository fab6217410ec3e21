"""Forcing the tiny random guard to write a chosen output, for tests of the real generation path."""

from __future__ import annotations

import contextlib

from grvl_sdk.backends.local import LocalBackend


@contextlib.contextmanager
def forced_output(backend: LocalBackend, text: str, harmful_logits: list[tuple[float, float]]):
    """Make the model write ``text``: a forward hook on the output head replaces each step's logits by
    -inf except the target token; at the i-th label step only the two label tokens keep finite logits
    ``harmful_logits[i] = (harmful, unharmful)``, so the model's probability of "harmful" there is
    exactly ``sigmoid(harmful - unharmful)``. Registered before the backend's own hook, which sees the
    forced logits."""
    tokenizer = backend.tokenizer
    target = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (tokenizer.convert_tokens_to_ids("Ġharmful"), tokenizer.convert_tokens_to_ids("Ġunharmful"))
    label_steps = [i for i, token in enumerate(target) if token in ids]
    assert len(label_steps) == len(harmful_logits), "each label must be a single ' harmful'/' unharmful' token"
    labels = dict(zip(label_steps, harmful_logits, strict=True))
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    step = [0]

    def force(module, inputs, output):
        forced = output.new_full(output.shape, float("-inf"))
        if step[0] in labels:
            forced[..., ids[0]], forced[..., ids[1]] = labels[step[0]]
        else:
            forced[..., target[step[0]] if step[0] < len(target) else end_id] = 0.0
        step[0] += 1
        return forced

    original = backend.model.generate

    def generate(**kwargs):
        step[0] = 0
        return original(**kwargs)

    handle = backend.model.get_output_embeddings().register_forward_hook(force)
    backend.model.generate = generate
    try:
        yield
    finally:
        handle.remove()
        del backend.model.generate
