"""Conservative defaults, in one place."""

from __future__ import annotations

#: The released model the CLI and docs use by default (the smallest and fastest).
DEFAULT_MODEL = "yueliu1999/GuardReasoner-VL-Eco-3B"
#: Environment variable that overrides the default model (id or local path).
MODEL_ENV_VAR = "GRVL_MODEL"

#: Upper bound on generated tokens. The paper's mean output is ~210 tokens (185 for Eco); the
#: authors allowed 4096. 1024 bounds latency while leaving room for long reasoning; outputs cut
#: before ``<result>`` become failed verdicts, never "unharmful".
DEFAULT_MAX_NEW_TOKENS = 1024

#: Vision budget per image, in pixels (each 28x28 area is one vision token after the 2x2 merge).
#: 1280*28*28 = 1,003,520 px (<= 1,280 vision tokens) keeps the authors' evaluation grid for ordinary
#: photos (1024x768 -> 27x37 = 999 tokens, as their harness) and bounds latency on huge ones (4032x3024
#: -> 1,230 tokens instead of their 15,552). See docs/performance.md, "Image budget".
DEFAULT_MAX_PIXELS = 1280 * 28 * 28
DEFAULT_MIN_PIXELS = 4 * 28 * 28
#: The R-SFT training cap of the recipe (spec 2.3): 768*768 px, at most 752 vision tokens.
RSFT_MAX_PIXELS = 768 * 768
#: The bounds of the authors' evaluation harness (the Qwen utilities): 4*28*28 .. 16384*28*28 px, so up
#: to 16,384 vision tokens per image (ordinary images at native resolution; very slow on huge ones).
AUTHORS_MIN_PIXELS = 4 * 28 * 28
AUTHORS_MAX_PIXELS = 16384 * 28 * 28

#: Images larger than this are refused before decoding (decompression bombs).
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
#: The Qwen2.5-VL resizer refuses images more elongated than this.
MAX_ASPECT_RATIO = 200

#: The authors allowed up to 10 images per check.
MAX_IMAGES_PER_CHECK = 10

#: The stop marker: generation ends once the verdict block is closed.
RESULT_CLOSE = "</result>"

# -- evaluation (grvl eval run) ---------------------------------------------------------------
#: ``grvl eval run`` defaults: the authors' evaluation settings (spec 6.2), so a run is comparable with
#: the published table. ``Guard`` itself keeps the latency-bounded defaults above.
EVAL_MIN_PIXELS = AUTHORS_MIN_PIXELS
EVAL_MAX_PIXELS = AUTHORS_MAX_PIXELS
#: The authors allowed 4096 new tokens (mean output ~210 tokens, 185 for Eco).
EVAL_MAX_NEW_TOKENS = 4096

# -- middleware -------------------------------------------------------------------------------
#: What a blocked wrapped call returns when the policy says ``on_block="refuse"``.
DEFAULT_REFUSAL = "Sorry, I can't help with that."
#: Streaming moderation: the first check of the accumulated response after this many characters...
DEFAULT_STREAM_CHECK_EVERY = 400
#: ...later ones at geometrically growing offsets (each gap ``(growth - 1)`` × the length checked)...
DEFAULT_STREAM_CHECK_GROWTH = 4.0
#: ...and at most this many guard generations per streamed choice, the final check included.
DEFAULT_STREAM_MAX_CHECKS = 3
#: Inputs generated together by ``check_batch``.
DEFAULT_BATCH_SIZE = 16
#: Verdict cache entries (LRU); 0 turns the cache off.
DEFAULT_CACHE_SIZE = 1024
#: Micro-batching: at most this many concurrent checks generated together...
DEFAULT_MAX_BATCH_SIZE = 16
#: ...waiting at most this long after the first one for others to join.
DEFAULT_MAX_WAIT_MS = 2.0
#: Conversations: characters of earlier turns given to the guard as context of the latest user turn.
DEFAULT_CONTEXT_CHARS = 2000
#: Scores: alternatives kept per generated token (local backend) / ``top_logprobs`` asked of a server.
SCORE_TOP_K = 5

# -- remote backend ---------------------------------------------------------------------------
#: Seconds to connect / read / write / wait for a pooled connection.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 120.0
DEFAULT_WRITE_TIMEOUT = 30.0
DEFAULT_POOL_TIMEOUT = 10.0
#: Retries after the first attempt, on connection errors, 429 and 5xx; back-off base and cap (seconds).
DEFAULT_MAX_RETRIES = 2
DEFAULT_BACKOFF_BASE = 0.2
DEFAULT_BACKOFF_MAX = 5.0
#: Circuit breaker: open after this many consecutive failed calls, try again after this many seconds.
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_RESET_S = 30.0
#: Connections kept open to the guard server.
DEFAULT_MAX_CONNECTIONS = 32
