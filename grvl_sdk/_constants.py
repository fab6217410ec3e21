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
