"""What the CLI prints: third-party noise off unless asked for, text safe for any terminal."""

from __future__ import annotations

import logging
import os
import unicodedata
import warnings

__all__ = ["quiet_third_party", "safe_text", "shorten"]

#: Characters of raw model output shown in human output (the rest with ``--show-raw`` or ``--json``).
RAW_PREVIEW_CHARS = 300


def quiet_third_party(verbose: bool) -> None:
    """Silence library progress bars, info logs and warnings (transformers' "Loading weights" bar,
    bitsandbytes' kernel messages, deprecation warnings) unless ``verbose``. Errors still show."""
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("transformers", "bitsandbytes", "accelerate", "torch", "peft", "trl", "datasets", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|trl|peft|bitsandbytes).*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def safe_text(text: str) -> str:
    """``text`` with every non-printable character (controls, NUL, shift-out, escapes, lone surrogates,
    format characters) written as a visible escape (``\\x0e``, ``\\u200b``); newlines and tabs kept."""
    out = []
    for char in text:
        if char in "\n\t" or (char.isprintable() and unicodedata.category(char) not in ("Cs", "Co", "Cn")):
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def shorten(text: str, limit: int = RAW_PREVIEW_CHARS) -> str:
    """The first ``limit`` characters of ``text`` and how many more there are."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"
