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

#: Vision budget per image, in pixels (each 28x28 area is one vision token). 768*768 is the R-SFT
#: training cap (<= 784 vision tokens); the authors' inference utility allowed 16384*28*28.
DEFAULT_MAX_PIXELS = 768 * 768
DEFAULT_MIN_PIXELS = 4 * 28 * 28

#: Images larger than this are refused before decoding (decompression bombs).
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
#: The Qwen2.5-VL resizer refuses images more elongated than this.
MAX_ASPECT_RATIO = 200

#: The authors allowed up to 10 images per check.
MAX_IMAGES_PER_CHECK = 10

#: The stop marker: generation ends once the verdict block is closed.
RESULT_CLOSE = "</result>"

# -- middleware -------------------------------------------------------------------------------
#: What a blocked wrapped call returns when the policy says ``on_block="refuse"``.
DEFAULT_REFUSAL = "Sorry, I can't help with that."
#: Streaming moderation: check the accumulated response every this many characters (and at the end).
DEFAULT_STREAM_CHECK_EVERY = 400
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
